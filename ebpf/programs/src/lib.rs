#![no_std]
// A library target lets the userspace crate name this crate as a build dependency, so
// cargo rebuilds the eBPF object when these sources change.
