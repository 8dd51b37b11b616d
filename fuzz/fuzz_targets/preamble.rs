//! The tunnel preamble, as any peer that completed a handshake may send it: decoding never
//! panics, never reads past the input, and what it accepts encodes back to itself.

#![no_main]

use hawser_model::preamble::{HEADER_LEN, Preamble};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Preamble::decode(data) {
        Ok(Some((preamble, used))) => {
            assert!(used <= data.len());
            assert_ne!(preamble.port, 0, "port 0 is refused");
            let again = preamble.encode();
            assert_eq!(Preamble::decode(&again), Ok(Some((preamble, again.len()))));
        }
        // Only a prefix of a preamble asks for more bytes.
        Ok(None) => {
            let announced = data.get(HEADER_LEN - 1).map_or(0, |n| usize::from(*n));
            assert!(data.len() < HEADER_LEN + announced);
        }
        Err(_) => {}
    }
});
