//! The CA client: Istio's `CreateCertificate` (so it also works against istiod) and
//! hawser's trust bundle, over TLS, authenticated by the node's credential.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::ServerName;
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

use super::{
    bundle::TrustBundle,
    connector::{self, CaRoots},
    held::Svid,
};
use crate::{
    grpc::{
        hawser::{TrustBundleRequest, trust_service_client::TrustServiceClient},
        istio::{
            IstioCertificateRequest,
            istio_certificate_service_client::IstioCertificateServiceClient,
        },
    },
    identity::certs,
    metrics::{METRICS, timed},
};
use hawser_model::SpiffeId;

pub struct CaClientConfig {
    /// `https://host:port`.
    pub address: String,
    /// PEM roots that the CA's serving certificate chains to.
    pub root_pem: String,
    /// The name to check in the CA's certificate.
    pub server_name: String,
    /// The file holding this node's credential, read for every request: a projected
    /// ServiceAccount token is replaced by the kubelet before it expires.
    pub token_file: PathBuf,
}

#[derive(Clone)]
pub struct CaClient {
    channel: Channel,
    token_file: PathBuf,
    /// What the CA's certificate must chain to: follows the bundle.
    roots: CaRoots,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl CaClient {
    /// Connects lazily: a CA that is down now is retried by each call.
    pub fn new(config: &CaClientConfig) -> Result<Self> {
        let roots = CaRoots::new(&config.root_pem)?;
        let name = ServerName::try_from(config.server_name.clone())
            .with_context(|| format!("--ca-server-name {:?}", config.server_name))?;
        let tls = roots.clone();
        let connect =
            tower::service_fn(move |uri| connector::connect(uri, name.clone(), tls.clone()));
        // The connector does the TLS: tonic sees a plain HTTP/2 endpoint.
        let plain = plain_http(&config.address)?;
        let channel = Endpoint::from_shared(plain)
            .with_context(|| format!("CA address {:?}", config.address))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(REQUEST_TIMEOUT)
            .connect_with_connector_lazy(connect);
        let client = Self {
            channel,
            token_file: config.token_file.clone(),
            roots,
        };
        client.authorization()?;
        Ok(client)
    }

    /// `Bearer <the token file's current content>`.
    fn authorization(&self) -> Result<MetadataValue<tonic::metadata::Ascii>> {
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("read the node token {}", self.token_file.display()))?;
        format!("Bearer {}", token.trim())
            .parse()
            .context("the node token is not a valid header value")
    }

    fn request<T>(&self, message: T) -> Result<Request<T>> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization()?);
        Ok(request)
    }

    /// Makes a key and a CSR for `id`, and has the CA sign it.
    pub async fn fetch_svid(&self, id: &SpiffeId, ttl: Duration) -> Result<Arc<Svid>> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        let csr = params.serialize_request(&key)?.pem()?;
        let request = self.request(IstioCertificateRequest {
            csr,
            validity_duration: ttl.as_secs() as i64,
            metadata: None,
        })?;
        let mut client = IstioCertificateServiceClient::new(self.channel.clone());
        let response = timed(
            &METRICS.ca_request_seconds,
            "CreateCertificate",
            client.create_certificate(request),
        )
        .await
        .map_err(refused)?
        .into_inner();
        Svid::new(id.clone(), response.cert_chain, key.serialize_pem()).map(Arc::new)
    }

    pub async fn trust_bundle(&self) -> Result<TrustBundle> {
        let mut client = TrustServiceClient::new(self.channel.clone());
        let bundle = timed(
            &METRICS.ca_request_seconds,
            "GetTrustBundle",
            client.get_trust_bundle(self.request(TrustBundleRequest {})?),
        )
        .await
        .map_err(refused)?
        .into_inner();
        if bundle.roots.is_empty() {
            bail!("the CA sent a trust bundle without roots");
        }
        for root in &bundle.roots {
            certs::info(root).context("a root in the trust bundle")?;
        }
        self.roots.follow_bundle(&bundle.roots);
        let mut federated = BTreeMap::new();
        for f in bundle.federated {
            if f.trust_domain == bundle.trust_domain || f.roots.is_empty() {
                bail!(
                    "the CA sent a federated bundle for {:?} that is its own or empty",
                    f.trust_domain
                );
            }
            for root in &f.roots {
                certs::info(root)
                    .with_context(|| format!("a root of trust domain {}", f.trust_domain))?;
            }
            federated.insert(f.trust_domain, f.roots);
        }
        let mut bundle = TrustBundle {
            trust_domain: bundle.trust_domain,
            roots: bundle.roots,
            revoked_serials: bundle.revoked_serials,
            revoked_identities: bundle.revoked_identities,
            federated: BTreeMap::new(),
        };
        // Never trusted: a domain whose roots are also ours.
        for (domain, roots) in federated {
            if bundle.shares_a_root(&roots) {
                tracing::error!("trust domain {domain} shares a root with ours: not trusted");
                continue;
            }
            bundle.federated.insert(domain, roots);
        }
        Ok(bundle)
    }
}

/// `address` (`https://host:port`, or `host:port`) as the `http://` URI the channel uses.
fn plain_http(address: &str) -> Result<String> {
    let authority = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address)
        .trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("CA address {address:?} is not https://host:port");
    }
    Ok(format!("http://{authority}"))
}

/// A CA error for people: an unreachable CA says so, with what to check.
fn refused(status: tonic::Status) -> anyhow::Error {
    if status.code() == tonic::Code::Unavailable {
        anyhow::anyhow!(
            "CA unreachable: {} (check --ca-address, that `hawser ca` runs there, and --ca-root)",
            status.message()
        )
    } else {
        anyhow::anyhow!("CA refused ({:?}): {}", status.code(), status.message())
    }
}
