//! Running commands, with a line for people before each long step.

use std::{
    ffi::OsString,
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// Announces a step.
pub fn step(what: &str) {
    eprintln!("==> {what}");
}

/// Runs a command to completion with inherited output; fails if it fails.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let started = Instant::now();
    let status = command(program)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    let secs = started.elapsed().as_secs();
    if secs >= 10 {
        eprintln!("    ({program} took {secs} s)");
    }
    Ok(())
}

/// Runs a command with its output held back: the last lines of it are shown only when it
/// fails; on success, the last line that contains `summary`.
pub fn run_quietly(program: &str, args: &[&str], summary: &str) -> Result<()> {
    let out = command(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    if !out.status.success() {
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        bail!(
            "`{program} {}` failed ({}):\n{tail}",
            args.join(" "),
            out.status
        );
    }
    if let Some(line) = lines.iter().rev().find(|l| l.contains(summary)) {
        eprintln!("    {line}");
    }
    Ok(())
}

/// Runs a command and returns whether it succeeded, quietly.
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    command(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command and returns its standard output.
pub fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = command(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo ARGS` in the workspace, with the workspace's own daemon for the tests.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(&cargo, args)
}

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A command with `~/.cargo/bin` on PATH (bpf-linker lives there, and rustc looks it up
/// by name), run from the workspace root.
fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace())
        .env("PATH", path_with_cargo_bin());
    cmd.env("HAWSER_BIN", workspace().join("target/debug/hawser"));
    cmd
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn path_with_cargo_bin() -> OsString {
    let mut paths = vec![cargo_bin()];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).unwrap_or_default()
}
