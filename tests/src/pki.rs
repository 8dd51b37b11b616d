//! Certificates made with the openssl CLI, as an operator or a company PKI would: CAs
//! that are not the mesh's, server certificates for external services, client
//! certificates for apps, impostors.

use std::path::{Path, PathBuf};

use anyhow::Result;

/// A certificate and its private key, PEM files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    /// The mesh CA's own signing pair in `hawser ca`'s state directory.
    pub fn mesh_ca(state_dir: &Path) -> Self {
        Self {
            cert: state_dir.join("ca-cert.pem"),
            key: state_dir.join("ca-key.pem"),
        }
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("openssl").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// A self-signed CA named `cn`, in `dir/<cn>.{crt,key}`.
pub fn ca(dir: &Path, cn: &str) -> Result<Pair> {
    std::fs::create_dir_all(dir)?;
    let pair = Pair {
        cert: dir.join(format!("{cn}.crt")),
        key: dir.join(format!("{cn}.key")),
    };
    let subject = format!("/CN={cn}");
    let mut args = vec!["req", "-x509"];
    args.extend(EC_KEY);
    args.extend([
        "-keyout",
        s(&pair.key),
        "-out",
        s(&pair.cert),
        "-subj",
        &subject,
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&args)?;
    Ok(pair)
}

/// A leaf for `subject` (e.g. `/CN=app-a`) with the extensions `ext` (openssl extension
/// lines, e.g. `subjectAltName=DNS:x`), signed by `ca`, in `dir/<name>.{crt,key}`.
pub fn leaf(dir: &Path, name: &str, subject: &str, ext: &str, ca: &Pair) -> Result<Pair> {
    std::fs::create_dir_all(dir)?;
    let pair = Pair {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    let (csr, ext_file) = (
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.ext")),
    );
    std::fs::write(
        &ext_file,
        format!("{ext}\nextendedKeyUsage=serverAuth,clientAuth\n"),
    )?;
    let mut args = vec!["req", "-new"];
    args.extend(EC_KEY);
    args.extend(["-keyout", s(&pair.key), "-subj", subject, "-out", s(&csr)]);
    openssl(&args)?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        s(&csr),
        "-CA",
        s(&ca.cert),
        "-CAkey",
        s(&ca.key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        s(&ext_file),
        "-out",
        s(&pair.cert),
    ])?;
    Ok(pair)
}
