//! Node credentials: each node daemon presents `authorization: Bearer <token>`, and the
//! token names the node.
//!
//! Either tokens from a YAML map `node-name: token` (mode 0600, like kubeadm's bootstrap
//! tokens), or, on Kubernetes, the daemon's projected ServiceAccount token, checked with a
//! TokenReview: it must be valid for the CA's audience, belong to the node daemons'
//! ServiceAccount, and be bound to a pod, whose node (Kubernetes ≥ 1.30 puts it in the
//! token's `authentication.kubernetes.io/node-name`) is the caller's node.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, api::PostParams};
use tonic::{Request, Status};

use crate::metrics::METRICS;

/// How node daemons prove which node they run on.
#[derive(Clone)]
pub enum NodeAuth {
    Tokens(NodeTokens),
    TokenReview(TokenReviewer),
}

impl NodeAuth {
    /// The node a request comes from, or Unauthenticated.
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let token = bearer(request)?.to_string();
        match self {
            NodeAuth::Tokens(tokens) => tokens.node_of(&token),
            NodeAuth::TokenReview(reviewer) => {
                let source = request.remote_addr().map(|a| a.ip());
                reviewer.review(source, &token).await
            }
        }
    }
}

fn bearer<T>(request: &Request<T>) -> Result<&str, Status> {
    let header = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated("no node credential (authorization: Bearer <token>)")
    })?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("the authorization header is not a bearer token"))
}

/// Checks ServiceAccount tokens with the API server.
#[derive(Clone)]
pub struct TokenReviewer {
    pub client: kube::Client,
    /// The audience node daemons' tokens are issued for.
    pub audience: String,
    /// `namespace/name` of the node daemons' ServiceAccount.
    pub service_account: String,
    pub budget: ReviewBudget,
}

/// Each TokenReview is the API server's work, done for anyone who can reach the CA with
/// any string as a token: a source address gets at most `REVIEWS_PER_WINDOW` per
/// `REVIEW_WINDOW` (a node daemon needs a few per identity and day).
#[derive(Clone, Default)]
pub struct ReviewBudget(Arc<Mutex<HashMap<Option<IpAddr>, Spent>>>);

/// Reviews counted since the window started.
type Spent = (Instant, u32);

const REVIEW_WINDOW: Duration = Duration::from_secs(10);
const REVIEWS_PER_WINDOW: u32 = 20;

impl ReviewBudget {
    /// Counts one review for `source`, or refuses it (ResourceExhausted).
    pub fn spend(&self, source: Option<IpAddr>) -> Result<(), Status> {
        let mut sources = self.0.lock().unwrap();
        sources.retain(|_, (started, _)| started.elapsed() < REVIEW_WINDOW);
        let (_, spent) = sources.entry(source).or_insert((Instant::now(), 0));
        if *spent >= REVIEWS_PER_WINDOW {
            return Err(Status::resource_exhausted(format!(
                "more than {REVIEWS_PER_WINDOW} node authentications in {REVIEW_WINDOW:?} from {}",
                source.map_or("an unknown address".into(), |ip| ip.to_string())
            )));
        }
        *spent += 1;
        Ok(())
    }
}

/// Where a bound ServiceAccount token names its pod's node.
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";

impl TokenReviewer {
    /// The node of `token`, sent from `source`, within that source's budget; every call is
    /// counted by its result (`hawser_ca_token_reviews_total`).
    pub async fn review(&self, source: Option<IpAddr>, token: &str) -> Result<String, Status> {
        let reviewed = match self.budget.spend(source) {
            Ok(()) => self.node_of(token).await,
            Err(throttled) => Err(throttled),
        };
        let result = match &reviewed {
            Ok(_) => "authenticated",
            Err(status) => match status.code() {
                tonic::Code::ResourceExhausted => "throttled",
                tonic::Code::Unauthenticated => "refused",
                _ => "unavailable",
            },
        };
        METRICS.ca_token_reviews.with_label_values(&[result]).inc();
        reviewed
    }

    async fn node_of(&self, token: &str) -> Result<String, Status> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Status::unavailable(format!("TokenReview: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Status::unauthenticated(format!(
                "node credential rejected by the API server: {}",
                status.error.unwrap_or_default()
            )));
        }
        // A token made for another audience (the API server's own, another service's)
        // must not authenticate a node here, even if the API server accepts it.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.contains(&self.audience) {
            return Err(Status::unauthenticated(format!(
                "the token is not for audience {} (it is for {audiences:?})",
                self.audience
            )));
        }
        let user = status.user.unwrap_or_default();
        let expected = match self.service_account.split_once('/') {
            Some((ns, name)) => format!("system:serviceaccount:{ns}:{name}"),
            None => String::new(),
        };
        if user.username.as_deref() != Some(expected.as_str()) {
            return Err(Status::unauthenticated(format!(
                "a token of {}, not of the node daemons' ServiceAccount {}",
                user.username.unwrap_or_default(),
                self.service_account
            )));
        }
        user.extra
            .as_ref()
            .and_then(|extra| extra.get(NODE_NAME))
            .and_then(|names| names.first().cloned())
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "the token names no node ({NODE_NAME}): use a projected token of a pod (Kubernetes 1.30 or later)"
                ))
            })
    }
}

/// Tokens shorter than this are refused at load: they could be guessed.
const MIN_TOKEN_LEN: usize = 16;

#[derive(Clone)]
pub struct NodeTokens {
    by_node: Arc<BTreeMap<String, String>>,
}

impl NodeTokens {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read node tokens {}", path.display()))?;
        let by_node: BTreeMap<String, String> = serde_yaml::from_str(&text)
            .with_context(|| format!("{}: expected `node-name: token` lines", path.display()))?;
        if let Some((node, _)) = by_node.iter().find(|(_, t)| t.len() < MIN_TOKEN_LEN) {
            bail!(
                "{}: the token of node {node} is shorter than {MIN_TOKEN_LEN} characters",
                path.display()
            );
        }
        Ok(Self {
            by_node: Arc::new(by_node),
        })
    }

    fn node_of(&self, token: &str) -> Result<String, Status> {
        self.by_node
            .iter()
            .find(|(_, known)| constant_time_eq(known.as_bytes(), token.as_bytes()))
            .map(|(node, _)| node.clone())
            .ok_or_else(|| Status::unauthenticated("unknown node credential"))
    }
}

/// Compares without leaking, through timing, how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_reviews_are_budgeted_per_source() {
        let budget = ReviewBudget::default();
        let (a, b) = (
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
        );
        for _ in 0..REVIEWS_PER_WINDOW {
            budget.spend(a).unwrap();
        }
        let refused = budget.spend(a).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("10.0.0.1"),
            "{}",
            refused.message()
        );
        assert!(budget.spend(b).is_ok(), "another source has its own budget");
    }
}
