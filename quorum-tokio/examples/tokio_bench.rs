//! A small throughput benchmark of [`quorum_tokio::AsyncDevice`] over
//! [`quorum_tokio::TokioFileChild`]ren, shaped like `qemu-img bench`: COUNT
//! requests of SIZE bytes, DEPTH tasks in flight on a tokio multi-thread
//! runtime, offsets advancing by SIZE and wrapping within the device.
//!
//! ```sh
//! cargo run --release -p quorum-tokio --example tokio_bench -- \
//!     [-w] [-d DEPTH] [-s SIZE] [-c COUNT] [--inline] [--early] a.img b.img c.img
//! ```
//!
//! `--inline` opens the children in [`quorum_tokio::IoMode::Inline`];
//! `--early` turns on early quorum.
//!
//! Prints the request rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use quorum_proto::Config;
use quorum_tokio::{AsyncChild, AsyncDevice, TokioFileChild};

struct Args {
    write: bool,
    depth: u64,
    size: u64,
    count: u64,
    inline: bool,
    early: bool,
    files: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        write: false,
        depth: 1,
        size: 4096,
        count: 100_000,
        inline: false,
        early: false,
        files: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    let num = |s: Option<String>| -> u64 {
        let s = s.expect("a number");
        let (n, m) = match s.strip_suffix(['k', 'K']) {
            Some(n) => (n, 1024),
            None => (s.as_str(), 1),
        };
        n.parse::<u64>().expect("a number") * m
    };
    while let Some(x) = it.next() {
        match x.as_str() {
            "-w" => a.write = true,
            "-d" => a.depth = num(it.next()),
            "-s" => a.size = num(it.next()),
            "-c" => a.count = num(it.next()),
            "--inline" => a.inline = true,
            "--early" => a.early = true,
            _ => a.files.push(x),
        }
    }
    a
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread().build().unwrap();
    rt.block_on(async move {
        let mut kids: Vec<Arc<dyn AsyncChild>> = Vec::new();
        for f in &a.files {
            let c = TokioFileChild::open(f, a.write, false).await.unwrap();
            #[allow(unused_mut)]
            let mut c = c;
            if a.inline {
                c = with_inline(c);
            }
            kids.push(Arc::new(c));
        }
        let n = kids.len();
        let config = Config::new(n, n / 2 + 1).with_early_quorum(a.early);
        let dev = Arc::new(AsyncDevice::new(config, kids).unwrap());
        let devsize = dev.size().await.unwrap();
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..a.depth.min(a.count))
            .map(|_| {
                let dev = dev.clone();
                let next = next.clone();
                let (count, size, write) = (a.count, a.size, a.write);
                tokio::spawn(async move {
                    let data: Arc<[u8]> = vec![0u8; size as usize].into();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return;
                        }
                        let off = (i * size) % (devsize - size);
                        if write {
                            dev.write(off, data.clone()).await.unwrap();
                        } else {
                            // A differing replica is outvoted, not an error.
                            dev.read(off, size as usize).await.unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{} {} x {} B, depth {}: {:.3} s, {:.0} requests/s, {:.2} us/request",
            a.count,
            if a.write { "writes" } else { "reads" },
            a.size,
            a.depth,
            secs,
            a.count as f64 / secs,
            secs * 1e6 / a.count as f64
        );
    });
}

fn with_inline(c: TokioFileChild) -> TokioFileChild {
    c.with_mode(quorum_tokio::IoMode::Inline)
}
