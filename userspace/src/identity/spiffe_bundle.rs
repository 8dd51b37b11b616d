//! The SPIFFE trust bundle format (a JWK set whose `x509-svid` keys carry the roots in
//! `x5c`), as trust domains exchange their roots for federation. PEM files are read too.

use anyhow::{Context, Result, bail};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use serde::{Deserialize, Serialize};
use x509_parser::{public_key::PublicKey, x509::SubjectPublicKeyInfo};

use super::certs;

#[derive(Serialize, Deserialize)]
struct Bundle {
    keys: Vec<Jwk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Jwk {
    #[serde(rename = "use")]
    usage: String,
    kty: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default)]
    x5c: Vec<String>,
}

/// The X.509 roots (PEM) of a SPIFFE bundle, or of a PEM file; refused without any.
pub fn roots(text: &str) -> Result<Vec<String>> {
    let roots = match text.trim_start().starts_with('{') {
        true => from_json(text)?,
        false => certs::split_pem(text)?,
    };
    if roots.is_empty() {
        bail!("no X.509 roots");
    }
    for (i, root) in roots.iter().enumerate() {
        let info = certs::info(root).with_context(|| format!("root {}", i + 1))?;
        if !info.is_ca {
            bail!("root {} ({}) is not a CA certificate", i + 1, info.subject);
        }
    }
    Ok(roots)
}

fn from_json(text: &str) -> Result<Vec<String>> {
    let bundle: Bundle = serde_json::from_str(text).context("a SPIFFE bundle")?;
    // JWT authorities (`jwt-svid`) play no part in mutual TLS.
    let x509 = bundle.keys.iter().filter(|k| k.usage == "x509-svid");
    x509.map(|key| {
        let [cert] = &key.x5c[..] else {
            bail!("an x509-svid key must carry exactly one certificate in x5c");
        };
        let der = STANDARD.decode(cert).context("x5c is not base64")?;
        Ok(pem::encode(&pem::Pem::new("CERTIFICATE", der)))
    })
    .collect()
}

/// `roots` (PEM) as a SPIFFE bundle at `sequence`.
pub fn to_json(roots: &[String], sequence: u64) -> Result<String> {
    let keys = roots.iter().map(|pem| jwk(pem)).collect::<Result<_>>()?;
    let bundle = Bundle {
        keys,
        spiffe_sequence: Some(sequence),
    };
    Ok(serde_json::to_string_pretty(&bundle)?)
}

/// A root as a JWK: its public key's parameters, and the certificate in `x5c`.
fn jwk(pem: &str) -> Result<Jwk> {
    let der = certs::der(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).context("a root")?;
    let spki = cert.public_key();
    let mut key = Jwk {
        usage: "x509-svid".into(),
        kty: String::new(),
        crv: None,
        x: None,
        y: None,
        n: None,
        e: None,
        x5c: vec![STANDARD.encode(&der)],
    };
    match spki.parsed().context("the root's public key")? {
        PublicKey::EC(point) => {
            let (crv, size) = curve(spki)?;
            let data = point.data();
            if data.len() != 1 + 2 * size || data[0] != 4 {
                bail!("an EC public key that is not an uncompressed {crv} point");
            }
            key.kty = "EC".into();
            key.crv = Some(crv.into());
            key.x = Some(URL_SAFE_NO_PAD.encode(&data[1..1 + size]));
            key.y = Some(URL_SAFE_NO_PAD.encode(&data[1 + size..]));
        }
        PublicKey::RSA(rsa) => {
            let trim =
                |b: &[u8]| URL_SAFE_NO_PAD.encode(&b[b.iter().take_while(|&&x| x == 0).count()..]);
            key.kty = "RSA".into();
            key.n = Some(trim(rsa.modulus));
            key.e = Some(trim(rsa.exponent));
        }
        _ => bail!("a root whose key is neither EC nor RSA"),
    }
    Ok(key)
}

/// The JWK name and coordinate size of an EC key's curve.
fn curve(spki: &SubjectPublicKeyInfo<'_>) -> Result<(&'static str, usize)> {
    let oid = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .context("an EC key without its curve")?;
    match oid.to_id_string().as_str() {
        "1.2.840.10045.3.1.7" => Ok(("P-256", 32)),
        "1.3.132.0.34" => Ok(("P-384", 48)),
        "1.3.132.0.35" => Ok(("P-521", 66)),
        other => bail!("an EC key on curve {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(alg: &'static rcgen::SignatureAlgorithm) -> String {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn roots_round_trip_through_a_spiffe_bundle() {
        let ours = [
            root(&rcgen::PKCS_ECDSA_P256_SHA256),
            root(&rcgen::PKCS_ECDSA_P384_SHA384),
        ];
        let json = to_json(&ours, 7).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["spiffe_sequence"], 7);
        assert_eq!(parsed["keys"][0]["use"], "x509-svid");
        assert_eq!(parsed["keys"][0]["kty"], "EC");
        assert_eq!(parsed["keys"][1]["crv"], "P-384");
        let back = roots(&json).unwrap();
        assert_eq!(back.len(), 2);
        for (a, b) in back.iter().zip(&ours) {
            assert_eq!(certs::der(a).unwrap(), certs::der(b).unwrap());
        }
        // The same roots as PEM.
        assert_eq!(roots(&ours.join("")).unwrap().len(), 2);
    }

    #[test]
    fn jwt_keys_are_skipped_and_bad_bundles_refused() {
        let one = root(&rcgen::PKCS_ECDSA_P256_SHA256);
        let mut bundle: serde_json::Value =
            serde_json::from_str(&to_json(std::slice::from_ref(&one), 1).unwrap()).unwrap();
        let jwt = serde_json::json!({"use": "jwt-svid", "kty": "EC", "kid": "k"});
        bundle["keys"].as_array_mut().unwrap().push(jwt);
        assert_eq!(roots(&bundle.to_string()).unwrap().len(), 1);
        bundle["keys"][0]["x5c"] = serde_json::json!([]);
        assert!(roots(&bundle.to_string()).is_err());
        assert!(roots("{\"keys\": []}").is_err(), "a bundle without roots");
        assert!(roots("not a bundle").is_err());
    }
}
