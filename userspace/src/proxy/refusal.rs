//! Why a connection was refused before any byte was relayed: one kind per cause, whose
//! `reason()` is the access log's `refusal` field and the metric label
//! (`hawser_connections_refused_total{direction, reason}`); the details follow in the log.

use std::fmt;

use crate::failure::Failure;

/// A refused connection.
#[derive(Debug)]
pub enum Refusal {
    /// The connect hook recorded no destination for a connection on the outbound listener.
    NoOriginalDestination,
    /// A connection to the daemon's listener from inside the pod, not steered to it.
    NotSteered,
    /// Too many connections from one source (or to one pod) still authenticating.
    TooManyHandshakes(String),
    /// The client did not complete an acceptable TLS handshake (or preamble).
    Handshake(Failure),
    /// A stream on an established serial session the session may not carry: past the
    /// session's life, the client's chain expired or no longer trusted, a bad preamble.
    Session(Failure),
    /// PeerAuthentication or AuthorizationPolicy does not admit the caller.
    Policy(String),
    /// The caller's identity or certificate is revoked.
    Revoked(String),
    /// The caller's trust domain is not trusted (its federated bundle was withdrawn).
    Untrusted(String),
    /// No route: the outbound traffic policy refuses the destination, or a Service has
    /// no ready endpoint.
    NoRoute(String),
    /// The tunnel to the destination's node could not be built (connect, handshake, the
    /// peer's identity).
    Tunnel(Failure),
    /// TLS originated for an external service failed (the DestinationRule named).
    Origination { rule: String, error: Failure },
    /// The destination (an upstream, or the app in the pod) could not be reached.
    Connect(Failure),
}

impl Refusal {
    /// The kind, for the access log and the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoOriginalDestination => "no_original_destination",
            Refusal::NotSteered => "not_steered",
            Refusal::TooManyHandshakes(_) => "too_many_handshakes",
            Refusal::Handshake(_) => "handshake",
            Refusal::Session(_) => "session",
            Refusal::Policy(_) => "policy",
            Refusal::Revoked(_) => "revoked",
            Refusal::Untrusted(_) => "untrusted_domain",
            Refusal::NoRoute(_) => "no_route",
            Refusal::Tunnel(_) => "tunnel",
            Refusal::Origination { .. } => "origination",
            Refusal::Connect(_) => "connect",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoOriginalDestination => {
                f.write_str("no original destination recorded for this connection")
            }
            Refusal::NotSteered => {
                f.write_str("not steered: a direct connection to the daemon's listener")
            }
            Refusal::TooManyHandshakes(why)
            | Refusal::Revoked(why)
            | Refusal::Untrusted(why)
            | Refusal::NoRoute(why) => f.write_str(why),
            Refusal::Policy(why) => write!(f, "policy: {why}"),
            Refusal::Handshake(e)
            | Refusal::Session(e)
            | Refusal::Tunnel(e)
            | Refusal::Connect(e) => {
                write!(f, "{e}")
            }
            Refusal::Origination { rule, error } => write!(f, "DestinationRule {rule}: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_own_label_and_the_details_follow() {
        let all = [
            Refusal::NoOriginalDestination,
            Refusal::NotSteered,
            Refusal::TooManyHandshakes("32 from 10.0.0.1".into()),
            Refusal::Handshake(Failure::Peer("bad certificate".into())),
            Refusal::Session(Failure::Peer("a serial session too old".into())),
            Refusal::Policy("DENY policy default/no-a".into()),
            Refusal::Revoked("the peer identity spiffe://x is revoked".into()),
            Refusal::Untrusted("no trust bundle for trust domain td1".into()),
            Refusal::NoRoute("REGISTRY_ONLY".into()),
            Refusal::Tunnel(Failure::Peer("peer is not b".into())),
            Refusal::Origination {
                rule: "shop/api".into(),
                error: Failure::Credentials("unknown CA".into()),
            },
            Refusal::Connect(Failure::TimedOut("connect 10.0.0.2:80".into())),
        ];
        let labels: std::collections::BTreeSet<&str> = all.iter().map(Refusal::reason).collect();
        assert_eq!(labels.len(), all.len());
        assert_eq!(all[10].to_string(), "DestinationRule shop/api: unknown CA");
        assert_eq!(all[11].to_string(), "connect 10.0.0.2:80: timed out");
        assert!(all.iter().all(|r| !r.to_string().is_empty()));
    }
}
