//! `percid::counter::metrics::PercidRecorder` as the process's global `metrics`
//! recorder: the standard macros from many threads, exact totals in the rendered
//! Prometheus text. One global recorder per process, so this file holds one test.
#![cfg(all(feature = "metrics", not(loom)))]

use percid::counter::metrics::PercidRecorder;
use std::collections::BTreeMap;
use std::sync::Barrier;

const THREADS: u64 = 32;
const PER_THREAD: u64 = 10_000;
const METHODS: [&str; 3] = ["GET", "POST", "PUT"];

/// The samples of an exposition: `name{labels}` to value, and the `# TYPE` lines.
fn parse(text: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut samples = BTreeMap::new();
    let mut types = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            types.push(t.to_owned());
        } else if !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let old = samples.insert(series.to_owned(), value.to_owned());
            assert!(old.is_none(), "series rendered twice: {series}");
        }
    }
    (samples, types)
}

#[test]
fn macros_from_many_threads_render_exact_totals() {
    let recorder = PercidRecorder::new()
        .with_buckets(&[10.0, 100.0])
        .install()
        .expect("the only global recorder of this test binary");
    metrics::describe_counter!("http_requests_total", "Requests by method.");
    metrics::describe_gauge!("http_in_flight", "Requests being handled.");

    let start = Barrier::new(THREADS as usize);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let start = &start;
            s.spawn(move || {
                start.wait();
                for i in 0..PER_THREAD {
                    // The macros look their key up on every call (no cached handle).
                    let method = METHODS[((t + i) % 3) as usize];
                    metrics::gauge!("http_in_flight").increment(1.0);
                    metrics::counter!("http_requests_total", "method" => method).increment(1);
                    metrics::counter!("http_bytes_total").increment(i % 7);
                    metrics::histogram!("http_size").record((i % 200) as f64);
                    metrics::gauge!("http_in_flight").decrement(1.0);
                }
                metrics::gauge!("threads_done").increment(1.0);
            });
        }
    });

    // The expected totals, computed the same way.
    let mut per_method = [0u64; 3];
    let (mut bytes, mut small, mut medium, mut sum) = (0u64, 0u64, 0u64, 0u64);
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            per_method[((t + i) % 3) as usize] += 1;
            bytes += i % 7;
            let v = i % 200;
            small += u64::from(v <= 10);
            medium += u64::from(v <= 100);
            sum += v;
        }
    }
    let total = THREADS * PER_THREAD;

    let text = recorder.render();
    let (samples, types) = parse(&text);
    let get = |series: &str| -> &str {
        samples
            .get(series)
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    };
    for (m, method) in METHODS.iter().enumerate() {
        let series = format!("http_requests_total{{method=\"{method}\"}}");
        assert_eq!(get(&series), per_method[m].to_string());
        let direct = recorder.counter_total("http_requests_total", &[("method", method)]);
        assert_eq!(direct, Some(per_method[m]));
    }
    assert_eq!(get("http_bytes_total"), bytes.to_string());
    assert_eq!(get("http_in_flight"), "0");
    assert_eq!(get("threads_done"), THREADS.to_string());
    assert_eq!(get("http_size_bucket{le=\"10\"}"), small.to_string());
    assert_eq!(get("http_size_bucket{le=\"100\"}"), medium.to_string());
    assert_eq!(get("http_size_bucket{le=\"+Inf\"}"), total.to_string());
    assert_eq!(get("http_size_count"), total.to_string());
    assert_eq!(get("http_size_sum"), sum.to_string());
    assert_eq!(
        samples.len(),
        3 + 1 + 1 + 1 + 5,
        "unexpected series in:\n{text}"
    );

    assert_eq!(
        types,
        [
            "http_bytes_total counter",
            "http_requests_total counter",
            "http_in_flight gauge",
            "threads_done gauge",
            "http_size histogram",
        ]
    );
    assert!(text.contains(
        "# HELP http_requests_total Requests by method.\n# TYPE http_requests_total counter\n"
    ));
    assert!(text.contains("# HELP http_in_flight Requests being handled.\n"));
}
