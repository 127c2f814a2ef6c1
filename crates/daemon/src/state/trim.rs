//! Hands freed heap memory back to the kernel after large purges.

/// Hands free heap memory back to the kernel: glibc returns freed blocks to the
/// system only from the top of its heaps (and unmaps only blocks above its mmap
/// threshold, which rises to 32 MiB as large blocks are freed), so what a burst
/// of keys left behind stays resident until `malloc_trim` releases the whole free
/// pages inside the heaps.
/// Returns whether any memory was released. A no-op on other C libraries.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(super) fn trim_heap() -> bool {
    // SAFETY: malloc_trim takes no pointers and only rearranges the allocator's
    // own free lists under its own locks; it is safe to call from any thread at
    // any time.
    unsafe { nix::libc::malloc_trim(0) != 0 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(super) fn trim_heap() -> bool {
    false
}
