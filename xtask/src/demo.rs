//! The demo (`hawser_testbed::demo`): two nodes on network namespaces, the built-in CA,
//! real curl and nginx; mTLS across the link with workload identities, a refusal by
//! policy, the same-node path, and the operator's CLI. Narrated step by step.

use anyhow::{Result, bail};
use hawser_testbed::demo::{self, Say};

pub fn run() -> Result<()> {
    if !hawser_testbed::can_run() {
        bail!("the demo needs root");
    }
    let narrate = &mut |say: Say<'_>| match say {
        Say::Step(what) => crate::cmd::step(what),
        Say::Detail(line) => println!("    {line}"),
    };
    let found = demo::run(narrate, false)?;
    crate::cmd::step(&format!(
        "so: b answered a through mTLS between the node daemons, and `{}` never crossed the link in the clear",
        found.marker
    ));
    if found.marker_on_wire {
        bail!("the marker crossed the link in the clear");
    }
    Ok(())
}
