//! Block store put/get throughput for a 256 MiB file, beside blake3 hashing alone in the
//! same run (the ceiling: every byte is hashed once on put and once on get); the durable
//! writer a fetch streams verified chunks into, beside the disk's own durable write in the
//! same round (`dd conv=fdatasync`: 1 MiB writes to one file, one `fdatasync`); chunk reads
//! as a task's input reads them (each strips the one-byte data tag); and a GC pass over the
//! store (list every block, mark the pinned file through its manifest, free nothing).
//!
//! `cargo bench -p shoal-host --bench store`

#[path = "common/data.rs"]
mod data;
#[path = "common/disk.rs"]
mod disk;

use std::{io, sync::Arc, time::Instant};

use data::pseudo_random;
use disk::{disk_mbps, settle};
use shoal_host::store::{BlockStore, GcMode, PinClass, Verified};

const LEN: usize = 256 << 20;
const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mbps(start: Instant) -> f64 {
    LEN as f64 / 1e6 / start.elapsed().as_secs_f64()
}

fn main() {
    let data = pseudo_random(LEN, 0x2545_F491_4F6C_DD1D);
    let (mut hash, mut put, mut get) = (Vec::new(), Vec::new(), Vec::new());
    let (mut chunks, mut gc) = (Vec::new(), Vec::new());
    let (mut disk, mut written) = (Vec::new(), Vec::new());
    // The chunks as a fetch hands them to the writer: verified on arrival.
    let verified: Vec<Verified> = data
        .chunks(1 << 20)
        .map(|c| Verified::new(c.to_vec()))
        .collect();
    // Every round's files stay until the end (see `disk` on deleting).
    let mut dirs = Vec::new();
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        settle();
        disk.push(disk_mbps(dir.path(), &data).best());
        settle();
        let store = Arc::new(BlockStore::open(dir.path()).expect("store"));
        let blocks = verified.clone();
        let start = Instant::now();
        let (writer, writing) = store.writer().expect("writer");
        for block in blocks {
            writer.blocking_send(block).expect("queued");
        }
        drop(writer);
        writing.finish().expect("stored");
        written.push(mbps(start));
        drop(store);
        dirs.push(dir);

        let start = Instant::now();
        std::hint::black_box(blake3::hash(&data));
        hash.push(mbps(start));

        // A fresh store each round, so put really writes (and fsyncs) every block.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        settle();
        let store = BlockStore::open(dir.path()).expect("store");
        let start = Instant::now();
        let cid = store
            .put_file_pinned(&data[..], PinClass::User)
            .expect("put");
        put.push(mbps(start));

        let start = Instant::now();
        let n = store.write_file(&cid, io::sink()).expect("get");
        get.push(mbps(start));
        assert_eq!(n as usize, LEN);

        let manifest = store.manifest(&cid).expect("manifest");
        let start = Instant::now();
        for i in 0..manifest.chunks.len() {
            std::hint::black_box(store.read_chunk(&cid, &manifest, i).expect("chunk"));
        }
        chunks.push(mbps(start));

        let start = Instant::now();
        let report = store.gc(GcMode::All).expect("gc");
        gc.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(report.freed_blocks, 0);
        dirs.push(dir);
    }
    drop(dirs);
    let (hash, put, get) = (median(hash), median(put), median(get));
    let (chunks, gc) = (median(chunks), median(gc));
    println!("256 MiB file, median of {ROUNDS} rounds");
    println!("  blake3 hash alone: {hash:>7.0} MB/s");
    println!(
        "  put (chunk, hash, write, fsync, rename): {put:>7.0} MB/s ({:.2}x hashing)",
        put / hash
    );
    println!(
        "  get (read, verify every chunk):          {get:>7.0} MB/s ({:.2}x hashing)",
        get / hash
    );
    println!(
        "  read_chunk, each (verify, strip tag):    {chunks:>7.0} MB/s ({:.2}x hashing)",
        chunks / hash
    );
    println!("  gc, 257 pinned blocks (walk, mark):      {gc:>7.1} ms");
    let (disk, written) = (median(disk), median(written));
    println!(
        "  the disk's durable write (dd conv=fdatasync or oflag=direct, the faster): \
         {disk:>7.0} MB/s"
    );
    println!(
        "  writer, 256 verified 1 MiB blocks (write, sync, rename, sync dirs): {written:>7.0} MB/s \
         ({:.2}x the disk)",
        written / disk
    );
}
