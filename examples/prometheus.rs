//! The `metrics` facade recorded into percid shards and exposed to Prometheus.
//!
//! ```text
//! cargo run --release --example prometheus --features metrics            # print once
//! cargo run --release --example prometheus --features metrics -- --serve 127.0.0.1:9898
//! ```
//!
//! `PercidRecorder` is installed as the global recorder; worker threads use the
//! standard `metrics::counter!`/`gauge!`/`histogram!` macros, and every update is one
//! rseq critical section on the caller's cid (two for a histogram). The exposition
//! is printed, or served on `GET /metrics` with `--serve ADDR` (plain `std::net`, one
//! connection at a time, while the workers keep running).

fn main() {
    use percid::counter::metrics::PercidRecorder;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    const WORKERS: u64 = 4;
    const REQUESTS: u64 = 100_000;

    let recorder = PercidRecorder::new()
        .with_buckets(&[0.000_1, 0.001, 0.01, 0.1])
        .install()
        .expect("no other recorder installed");
    metrics::describe_counter!("app_requests_total", "Requests handled, by route.");
    metrics::describe_gauge!("app_requests_in_flight", "Requests being handled now.");
    metrics::describe_histogram!("app_request_seconds", "Time to handle a request.");

    let serve = std::env::args().skip_while(|a| a != "--serve").nth(1);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for worker in 0..WORKERS {
            let stop = &stop;
            let forever = serve.is_some();
            s.spawn(move || {
                // Handles registered once per thread: the macros look the key up on
                // every call, a kept handle does not.
                let in_flight = metrics::gauge!("app_requests_in_flight");
                let seconds = metrics::histogram!("app_request_seconds");
                let routes = [
                    metrics::counter!("app_requests_total", "route" => "/"),
                    metrics::counter!("app_requests_total", "route" => "/api"),
                ];
                let mut i = 0u64;
                while (forever && !stop.load(Ordering::Relaxed)) || i < REQUESTS {
                    let start = Instant::now();
                    in_flight.increment(1.0);
                    routes[usize::from((i + worker).is_multiple_of(4))].increment(1);
                    in_flight.decrement(1.0);
                    seconds.record(start.elapsed());
                    i += 1;
                    if forever && i.is_multiple_of(1024) {
                        std::thread::yield_now();
                    }
                }
            });
        }

        let Some(addr) = &serve else {
            return;
        };
        let listener = std::net::TcpListener::bind(addr).expect("bind the --serve address");
        eprintln!("serving http://{addr}/metrics (Ctrl-C stops)");
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request_line = String::new();
            if BufReader::new(&stream)
                .read_line(&mut request_line)
                .is_err()
            {
                continue;
            }
            let (status, body) = if request_line.starts_with("GET /metrics") {
                ("200 OK", recorder.render())
            } else {
                ("404 Not Found", String::new())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        stop.store(true, Ordering::Relaxed);
    });

    let total: u64 = ["/", "/api"]
        .iter()
        .filter_map(|route| recorder.counter_total("app_requests_total", &[("route", route)]))
        .sum();
    assert_eq!(total, WORKERS * REQUESTS, "every request counted once");
    println!("# percid backend: {}", percid::rseq::status());
    print!("{}", recorder.render());
}
