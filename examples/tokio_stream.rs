//! A tokio task consuming a `percid::ring::Receiver` as a `futures_core::Stream`, fed
//! by plain threads (which send with the blocking `send`, and `send_many` for
//! batches). The receiver's `poll_next` is driven with `std::future::poll_fn`, so no
//! stream combinator crate is needed.
//!
//! ```sh
//! cargo run --release --example tokio_stream
//! ```

use std::pin::Pin;

use futures_core::Stream;

/// Plain threads sending.
const PRODUCERS: u64 = 4;
/// Numbers each of them sends (half one at a time, half in batches of 32).
const PER_PRODUCER: u64 = 100_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (tx, mut rx) = percid::ring::channel::<u64>(256)
        .unwrap_or_else(|e| panic!("cannot build the ring: {e:?}"));

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let first = p * PER_PRODUCER + 1;
                let half = first + PER_PRODUCER / 2;
                for v in first..half {
                    tx.send(v).expect("the consumer is alive");
                }
                let last = first + PER_PRODUCER;
                let mut start = half;
                while start < last {
                    let end = (start + 32).min(last);
                    tx.send_many(start..end).expect("the consumer is alive");
                    start = end;
                }
            })
        })
        .collect();
    // The stream ends once every sender is gone: the threads' clones and this one.
    drop(tx);

    let consumer = tokio::spawn(async move {
        let (mut count, mut sum) = (0u64, 0u64);
        while let Some(v) = std::future::poll_fn(|cx| Pin::new(&mut rx).poll_next(cx)).await {
            count += 1;
            sum += v;
        }
        (count, sum)
    });

    for p in producers {
        p.join().expect("a producer panicked");
    }
    let (count, sum) = consumer.await.expect("the consumer panicked");
    let n = PRODUCERS * PER_PRODUCER;
    assert_eq!(count, n, "messages received");
    assert_eq!(sum, n * (n + 1) / 2, "sum of the messages");
    println!(
        "a tokio task streamed {count} numbers from {PRODUCERS} threads through a percid \
         ring: sum {sum} = 1 + ... + {n}"
    );
}
