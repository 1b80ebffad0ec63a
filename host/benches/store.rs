//! Block store put/get throughput for a 256 MiB file, beside blake3 hashing alone in the
//! same run (the ceiling: every byte is hashed once on put and once on get).
//!
//! `cargo bench -p shoal-host --bench store`

use std::{io, time::Instant};

use shoal_host::store::BlockStore;

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
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let data: Vec<u8> = (0..LEN / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    let (mut hash, mut put, mut get) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        std::hint::black_box(blake3::hash(&data));
        hash.push(mbps(start));

        // A fresh store each round, so put really writes (and fsyncs) every block.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let store = BlockStore::open(dir.path()).expect("store");
        let start = Instant::now();
        let cid = store.put_bytes(&data).expect("put");
        put.push(mbps(start));

        let start = Instant::now();
        let n = store.write_file(&cid, io::sink()).expect("get");
        get.push(mbps(start));
        assert_eq!(n as usize, LEN);
    }
    let (hash, put, get) = (median(hash), median(put), median(get));
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
}
