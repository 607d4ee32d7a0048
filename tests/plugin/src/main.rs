//! Prints the calling thread's rseq status, then runs a few counter additions on a
//! thread of its own and prints that thread's status: tests/static_binary.rs builds
//! it with `-C target-feature=+crt-static` and checks both say `owner glibc`.

fn main() {
    let counter = percid::Counter::new();
    counter.add(1);
    println!("main: {}", percid::rseq::status());
    std::thread::scope(|s| {
        s.spawn(|| {
            counter.add(1);
            println!("thread: {}", percid::rseq::status());
        });
    });
    assert_eq!(counter.sum(), 2);
}
