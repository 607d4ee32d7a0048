//! The plugin of `tests/plugin.rs`: a few `extern "C"` entry points over a percid
//! `Counter`, so that loading, calling, unloading and reloading it exercises the
//! sections percid runs from inside a shared object.

use percid::Counter;

/// The plugin's counter: per-cid storage inside this shared object's data.
static COUNTER: Counter = Counter::new();

/// Adds `n` to the plugin's counter (an rseq section on the rseq backend).
#[unsafe(no_mangle)]
pub extern "C" fn plugin_add(n: u64) {
    COUNTER.add(n);
}

/// The plugin's counter total.
#[unsafe(no_mangle)]
pub extern "C" fn plugin_sum() -> u64 {
    COUNTER.sum()
}

/// The calling thread's backend inside the plugin: 0 rseq, 1 portable, 2 simulated.
#[unsafe(no_mangle)]
pub extern "C" fn plugin_backend() -> u32 {
    match percid::rseq::status().backend {
        percid::rseq::Backend::Rseq => 0,
        percid::rseq::Backend::Portable => 1,
        percid::rseq::Backend::Simulated => 2,
    }
}
