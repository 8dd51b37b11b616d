//! `hawser-cni install`: puts the plugin where the runtime finds it and chains it after
//! the cluster's CNI in the configuration the runtime uses (the first file of the CNI
//! configuration directory, as kubelet and containerd pick it). Idempotent: run again, it
//! changes nothing; an upgrade replaces the binary and updates the entry.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

pub const PLUGIN_TYPE: &str = "hawser-cni";

pub struct Install {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub socket: PathBuf,
    pub fail_closed: bool,
}

impl Install {
    pub fn run(&self) -> Result<PathBuf> {
        let exe = std::env::current_exe().context("this binary's path")?;
        write_atomically(
            &self.bin_dir.join(PLUGIN_TYPE),
            &std::fs::read(&exe)?,
            0o755,
        )?;
        let conf = self.first_conf()?;
        let text =
            std::fs::read_to_string(&conf).with_context(|| format!("read {}", conf.display()))?;
        let mut list: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", conf.display()))?;
        let target = if conf.extension().is_some_and(|e| e == "conflist") {
            conf.clone()
        } else {
            // A single-plugin `.conf` becomes a list, under a name sorted where it was.
            list = to_list(list);
            conf.with_extension("conflist")
        };
        let plugins = list["plugins"]
            .as_array_mut()
            .with_context(|| format!("{}: no `plugins` list", conf.display()))?;
        plugins.retain(|p| p["type"] != PLUGIN_TYPE);
        plugins.push(json!({
            "type": PLUGIN_TYPE,
            "socket": self.socket,
            "failClosed": self.fail_closed,
        }));
        let text = serde_json::to_string_pretty(&list)?;
        write_atomically(&target, text.as_bytes(), 0o644)?;
        if target != conf {
            std::fs::remove_file(&conf)?;
        }
        Ok(target)
    }

    /// The configuration the runtime uses: the first `.conflist`/`.conf`/`.json` by name.
    fn first_conf(&self) -> Result<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .with_context(|| format!("read {}", self.conf_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
            })
            .collect();
        files.sort();
        match files.into_iter().next() {
            Some(first) => Ok(first),
            None => bail!(
                "no CNI configuration in {}: install the cluster's network plugin first",
                self.conf_dir.display()
            ),
        }
    }
}

/// `{"cniVersion", "name", "type", ...}` as `{"cniVersion", "name", "plugins": [...]}`.
fn to_list(mut single: Value) -> Value {
    let version = single["cniVersion"].take();
    let name = single["name"].take();
    if let Some(o) = single.as_object_mut() {
        o.remove("cniVersion");
        o.remove("name");
    }
    json!({"cniVersion": version, "name": name, "plugins": [single]})
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("hawser-tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replace {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(dir: &Path) -> Install {
        let (bin_dir, conf_dir) = (dir.join("bin"), dir.join("net.d"));
        std::fs::create_dir_all(&bin_dir).unwrap();
        std::fs::create_dir_all(&conf_dir).unwrap();
        Install {
            bin_dir,
            conf_dir,
            socket: "/var/run/hawser/cni.sock".into(),
            fail_closed: false,
        }
    }

    #[test]
    fn chains_after_the_clusters_plugins_once() {
        let dir = tempfile::tempdir().unwrap();
        let i = install(dir.path());
        let conflist = i.conf_dir.join("10-calico.conflist");
        std::fs::write(
            &conflist,
            r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"calico"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        std::fs::write(i.conf_dir.join("99-other.conf"), "{}").unwrap();
        for _ in 0..2 {
            assert_eq!(i.run().unwrap(), conflist);
        }
        let list: Value =
            serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
        let types: Vec<&str> = list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["calico", "portmap", PLUGIN_TYPE]);
        assert!(i.bin_dir.join(PLUGIN_TYPE).exists());
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_list_and_no_conf_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let i = install(dir.path());
        assert!(
            i.run()
                .unwrap_err()
                .to_string()
                .contains("no CNI configuration")
        );
        std::fs::write(
            i.conf_dir.join("10-flannel.conf"),
            r#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{}}"#,
        )
        .unwrap();
        let target = i.run().unwrap();
        assert_eq!(target, i.conf_dir.join("10-flannel.conflist"));
        assert!(!i.conf_dir.join("10-flannel.conf").exists());
        let list: Value = serde_json::from_str(&std::fs::read_to_string(&target).unwrap()).unwrap();
        assert_eq!(list["cniVersion"], "0.3.1");
        assert_eq!(list["plugins"][0]["type"], "flannel");
        assert_eq!(list["plugins"][1]["type"], PLUGIN_TYPE);
    }
}
