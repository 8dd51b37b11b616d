//! Node credentials: each node daemon presents `authorization: Bearer <token>`, and the
//! token names the node.
//!
//! Tokens live in a YAML map `node-name: token` (mode 0600, like kubeadm's bootstrap
//! tokens). On Kubernetes, the node's ServiceAccount token checked by TokenReview takes
//! this place.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use anyhow::{Context, Result, bail};
use tonic::{Request, Status};

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

    /// The node a request comes from, or Unauthenticated.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("no node credential (authorization: Bearer <token>)")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header is not a bearer token")
            })?;
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
