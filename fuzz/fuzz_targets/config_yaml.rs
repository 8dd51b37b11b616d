//! The YAML tenants write (Workloads, InboundPorts, Istio's PeerAuthentication,
//! AuthorizationPolicy, ServiceEntry, DestinationRule): reading never panics; it yields a
//! registry or errors that each name a line of the input.

#![no_main]

use std::path::Path;

use hawser_model::config::parse_registry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = parse_registry(Path::new("fuzz.yaml"), text) {
        let lines = text.lines().count().max(1);
        for error in errors.0 {
            assert!(error.line.is_some_and(|l| l >= 1 && l <= lines), "{error}");
        }
    }
});
