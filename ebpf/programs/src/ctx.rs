//! Reading context fields the way the verifier accepts.
//!
//! The verifier refuses a load through a context pointer that the compiler has offset
//! first (`r1 += 48; r2 = *(u32 *)(r1 + 0)`), which is what LLVM makes of copying an array
//! field. Each word is therefore read on its own, with a volatile load at its own offset.

#[inline(always)]
pub fn ctx_read(field: &u32) -> u32 {
    unsafe { core::ptr::read_volatile(field) }
}

#[inline(always)]
pub fn ctx_read_ip6(field: &[u32; 4]) -> [u32; 4] {
    [
        ctx_read(&field[0]),
        ctx_read(&field[1]),
        ctx_read(&field[2]),
        ctx_read(&field[3]),
    ]
}
