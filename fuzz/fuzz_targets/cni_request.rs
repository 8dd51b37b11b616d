//! A request line on the daemon's CNI socket: parsing never panics, and what it accepts
//! serializes back to a request that parses to the same thing.

#![no_main]

use hawser_model::cni::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(request) = Request::parse(line) {
        let text = serde_json::to_string(&request).expect("a request serializes");
        assert_eq!(Request::parse(&text), Ok(request));
    }
});
