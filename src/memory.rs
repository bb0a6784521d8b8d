//! The allocator. On Linux the server allocates with jemalloc: per-thread caches without the
//! arena locks and free-list consolidation that took ~20 % of the gateway's CPU under load with
//! glibc's allocator (measured with perf; see BENCHMARKS.md). Freed memory goes back to the
//! operating system by itself: jemalloc's background thread purges pages left unused for a
//! second, so the memory a burst of streams took is returned without anyone asking.

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
mod jemalloc {
    #[global_allocator]
    static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// jemalloc's `malloc_conf`: a C string pointer it reads at start-up.
    #[repr(transparent)]
    pub struct Conf(*const std::ffi::c_char);

    // SAFETY: the pointer is to a static, immutable C string.
    unsafe impl Sync for Conf {}

    /// A background thread returns unused pages; dirty pages go back after 1 s, and are not
    /// kept as "muzzy" in between.
    #[used]
    #[unsafe(export_name = "_rjem_malloc_conf")]
    pub static MALLOC_CONF: Conf =
        Conf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());
}

/// The allocator in use, for the logs at start-up.
pub fn allocator() -> &'static str {
    if cfg!(all(target_os = "linux", not(target_env = "musl"))) {
        "jemalloc"
    } else {
        "system"
    }
}
