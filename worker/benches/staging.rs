//! Filling upload staging buffers from a snapshot in the page cache, the
//! CPU half of the staged GPU upload (`gpu/plan.rs`, `Source`): from a
//! fresh mapping of the file (each page touched through a fault, as an
//! upload from a just-opened snapshot does) against `pread` straight into
//! the buffer, on one thread and on two. A 512 MiB file of random bytes in
//! a temp dir, read once first; 4 MiB buffers. Needs no GPU.
//!
//!     cargo bench -p thaw-worker --bench staging

use std::io::Write;

use criterion::{criterion_main, Criterion, Throughput};
use thaw_snapshot::mmap::MappedFile;
use thaw_worker::gpu::plan::{plan, Source, Staging, TensorBytes};

const SIZE: u64 = 512 << 20;
const CHUNK: u64 = 4 << 20;

fn staging(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("weights.bin");
    {
        let mut file = std::fs::File::create(&path).expect("file");
        let mut block = vec![0u8; 1 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..SIZE >> 20 {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            file.write_all(&block).expect("written");
        }
    }
    let _ = std::fs::read(&path).expect("into the page cache");
    let tensors = [TensorBytes {
        name: "all".into(),
        range: 0..SIZE,
    }];
    let chunks = plan(
        &tensors,
        Staging {
            chunk_bytes: CHUNK,
            slots: 2,
            streams: 1,
        },
    )
    .expect("a plan");

    let mut group = c.benchmark_group("staging");
    group.throughput(Throughput::Bytes(SIZE));
    group.sample_size(10);
    for threads in [1usize, 2] {
        // Thread t stages chunks t, t + threads, ... into its own buffer.
        let fill = |source: Source<'_>| {
            std::thread::scope(|scope| {
                for t in 0..threads {
                    let chunks = &chunks;
                    scope.spawn(move || {
                        let mut buffer = vec![0u8; CHUNK as usize];
                        for chunk in chunks.iter().skip(t).step_by(threads) {
                            source.stage(chunk, &mut buffer).expect("staged");
                        }
                    });
                }
            });
        };
        group.bench_function(format!("fresh_mapping/{threads}"), |b| {
            b.iter(|| {
                let mapped = MappedFile::open(&path).expect("mapped");
                fill(Source::Mapped(mapped.bytes()));
            })
        });
        let file = std::fs::File::open(&path).expect("opened");
        group.bench_function(format!("pread/{threads}"), |b| {
            b.iter(|| fill(Source::File(&file)))
        });
    }
    group.finish();
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    staging(&mut c);
}

criterion_main!(benches);
