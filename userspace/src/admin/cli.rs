//! `hawser status | certs | workloads | policy check`: a running daemon seen through its
//! admin API, as tables for people or as JSON (`--json`) for scripts.

use anyhow::{Context, Result, bail};
use comfy_table::{Table, presets::NOTHING};
use serde::{Serialize, de::DeserializeOwned};

use std::net::SocketAddr;

use super::{
    peer,
    views::{Cert, Certs, ConfigDump, PeerCerts, PolicyCheck, Status},
};
use crate::svid::TrustBundle;

pub struct AdminClient {
    base: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// `base`: the admin API, e.g. `http://127.0.0.1:15000`.
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .query(query)
            .send()
            .await
            .with_context(|| {
                format!(
                    "no hawser daemon answers at {} (is `hawser node` running here? set --admin)",
                    self.base
                )
            })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("{path}: {status}: {}", body.trim());
        }
        response
            .json()
            .await
            .with_context(|| format!("{path}: unexpected answer"))
    }
}

/// Prints `view` as pretty JSON, or with `table` for people.
fn show<T: Serialize>(view: &T, json: bool, table: impl FnOnce(&T)) -> Result<()> {
    match json {
        true => println!("{}", serde_json::to_string_pretty(view)?),
        false => table(view),
    }
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.to_vec());
    t
}

fn or_dash(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("-")
}

pub async fn status(client: &AdminClient, json: bool) -> Result<()> {
    let status: Status = client.get("/status", &[]).await?;
    show(&status, json, |s| {
        println!(
            "node {}  version {}  up {}s  tunnel TLS: {}  CA: {}",
            s.node,
            s.version,
            s.uptime_secs,
            s.tls,
            if s.ca { "yes" } else { "none" }
        );
        match s.ready {
            true => println!("ready"),
            false => println!("NOT READY: {}", s.not_ready.join("; ")),
        }
        let mut t = table(&["POD", "IP", "IDENTITY", "SVID SERIAL", "SVID EXPIRES"]);
        for p in &s.pods {
            t.add_row(vec![
                p.pod.as_str(),
                &p.ip,
                &p.identity,
                or_dash(&p.svid_serial),
                or_dash(&p.svid_not_after),
            ]);
        }
        println!("\n{t}");
    })
}

pub async fn certs(client: &AdminClient, json: bool) -> Result<()> {
    let certs: Certs = client.get("/certs", &[]).await?;
    show(&certs, json, |c| {
        let mut t = table(&[
            "IDENTITY",
            "STATE",
            "SERIAL",
            "NOT BEFORE",
            "NOT AFTER",
            "CHAIN",
        ]);
        for id in &c.identities {
            let leaf = id.chain.first();
            let field = |f: fn(&super::views::Cert) -> &str| leaf.map_or("-", f).to_string();
            t.add_row(vec![
                id.identity.clone(),
                id.state.clone(),
                field(|c| &c.serial),
                field(|c| &c.not_before),
                field(|c| &c.not_after),
                id.chain.len().to_string(),
            ]);
        }
        println!("{t}");
        let mut roots = table(&["TRUST ROOT", "SERIAL", "NOT AFTER"]);
        for r in &c.trust_roots {
            roots.add_row(vec![r.subject.as_str(), &r.serial, &r.not_after]);
        }
        println!("\n{roots}");
    })
}

/// The chain `peer`'s tunnel port presents, checked against this daemon's trust bundle;
/// fails (after showing it) when the chain does not pass.
pub async fn peer_certs(client: &AdminClient, peer: SocketAddr, json: bool) -> Result<()> {
    let held: Certs = client.get("/certs", &[]).await?;
    let bundle = TrustBundle {
        trust_domain: held.trust_domain,
        roots: held.trust_roots.into_iter().map(|r| r.pem).collect(),
        revoked_serials: held.revoked_serials,
        revoked_identities: held.revoked_identities,
        // The peer is checked as a tunnel of the local trust domain.
        federated: Default::default(),
    };
    let chain = peer::presented(peer).await?;
    let verdict = peer::check(&chain, &bundle);
    let view = PeerCerts {
        peer: peer.to_string(),
        chain: chain
            .iter()
            .filter_map(|der| {
                let pem = pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()));
                Cert::from_pem(&pem)
            })
            .collect(),
        identity: verdict.as_ref().ok().map(ToString::to_string),
        refused: verdict.as_ref().err().map(|e| format!("{e:#}")),
    };
    show(&view, json, |v| {
        let mut t = table(&["SUBJECT", "URI SAN", "SERIAL", "NOT AFTER"]);
        for c in &v.chain {
            let uri = c.uri_sans.first().map_or("-", String::as_str);
            t.add_row(vec![c.subject.as_str(), uri, &c.serial, &c.not_after]);
        }
        println!("{t}");
        match (&v.identity, &v.refused) {
            (Some(id), _) => println!("\nverified against this node's trust bundle: {id}"),
            (None, Some(why)) => println!("\nREFUSED by this node's trust bundle: {why}"),
            (None, None) => {}
        }
    })?;
    match verdict {
        Ok(_) => Ok(()),
        Err(e) => Err(e.context(format!("{peer}'s chain does not pass"))),
    }
}

pub async fn workloads(client: &AdminClient, json: bool) -> Result<()> {
    let dump: ConfigDump = client.get("/config_dump", &[]).await?;
    show(&dump, json, |d| {
        let mut t = table(&[
            "NAMESPACE",
            "NAME",
            "IP",
            "NODE",
            "SERVICE ACCOUNT",
            "ENROLLED HERE",
        ]);
        for w in &d.workloads {
            let enrolled = d.enrolled.contains(&w.key());
            t.add_row(vec![
                w.namespace.clone(),
                w.name.clone(),
                w.ips_text(),
                w.node_name.clone(),
                w.service_account.clone(),
                if enrolled { "yes" } else { "no" }.into(),
            ]);
        }
        println!("{t}");
    })
}

pub async fn policy_check(client: &AdminClient, from: &str, to: &str, json: bool) -> Result<()> {
    let check: PolicyCheck = client
        .get("/policy/check", &[("from", from), ("to", to)])
        .await?;
    show(&check, json, |c| {
        println!("from:      {}", or_dash(&c.from));
        println!("to:        {} port {}", c.to, c.port);
        println!("mTLS mode: {}", c.mtls_mode);
        let verdict = if c.allowed { "ALLOW" } else { "DENY" };
        println!("verdict:   {verdict} ({}: {})", c.decided_by, c.reason);
    })
}
