//! 200 concurrent clients mixing GETs and PUTs of the same and different
//! files against the real server: all finish, every download is exactly
//! one complete version of its file (a reader never sees a half-written
//! file), and every upload is stored intact.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_transfer::client::{self, ClientOptions, GetTarget, PutSource, Silent};

const CLIENTS: usize = 200;
const SHARED: usize = 10;
const VERSIONS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_clients_mixing_gets_and_puts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let src = dir.path().join("src");

    // Shared names, each with several versions of different sizes; version
    // 0 is stored before the clients start.
    let mut versions: HashMap<String, HashSet<String>> = HashMap::new();
    let mut version_files: Vec<Vec<PathBuf>> = Vec::new();
    for f in 0..SHARED {
        let name = format!("shared/{f}.bin");
        let mut files = Vec::new();
        for v in 0..VERSIONS {
            let data = bytes(64 * 1024 + (f * 7 + v * 13) % 16 * 100_000, (f * 10 + v) as u64);
            versions.entry(name.clone()).or_default().insert(blake3_hex(&data));
            let path = src.join(format!("{f}-{v}.bin"));
            write_file(&path, &data);
            files.push(path);
        }
        write_file(&server.root().join(&name), &std::fs::read(&files[0]).unwrap());
        version_files.push(files);
    }

    let opts = ClientOptions {
        server: server.addr.clone(),
        retries: 20,
        backoff: client::Backoff { first: Duration::from_millis(20), max: Duration::from_millis(500) },
        cache_dir: Some(dir.path().join("cache")),
        ..ClientOptions::default()
    };
    let opts = Arc::new(opts);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();

    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let opts = opts.clone();
        let f = i % SHARED;
        let (name, job) = match i % 4 {
            // GET of a shared file while others replace it.
            0 | 1 => (format!("shared/{f}.bin"), Job::Get(out.join(format!("{i}.bin")))),
            // PUT of a new version of a shared file. Clients with the same
            // local file share an upload identity (and so an upload id):
            // the server must keep their sessions apart.
            2 => (format!("shared/{f}.bin"), Job::Put(version_files[f][i % VERSIONS].clone())),
            // PUT of a file of its own.
            _ => {
                let path = src.join(format!("own-{i}.bin"));
                write_file(&path, &bytes(10_000 + i * 997, 1000 + i as u64));
                (format!("own/{i}.bin"), Job::Put(path))
            }
        };
        tasks.push(tokio::spawn(async move {
            let result = match &job {
                Job::Get(path) => {
                    client::get(&opts, &name, GetTarget::File(path.clone()), &mut Silent).await.map(|r| r.blake3)
                }
                Job::Put(path) => {
                    client::put(&opts, PutSource::File(path.clone()), &name, &mut Silent).await.map(|r| r.blake3)
                }
            };
            (i, name, job, result)
        }));
    }

    let mut gets = 0;
    let mut puts = 0;
    for task in tasks {
        let (i, name, job, result) = task.await.unwrap();
        let hash = result.unwrap_or_else(|e| panic!("client {i} ({name}) failed: {e}"));
        match job {
            Job::Get(path) => {
                let content = blake3_hex(&std::fs::read(&path).unwrap());
                assert_eq!(content, hash);
                assert!(versions[&name].contains(&content), "client {i} read a version of {name} never written");
                gets += 1;
            }
            Job::Put(path) => {
                assert_eq!(hash, blake3_hex(&std::fs::read(&path).unwrap()));
                puts += 1;
            }
        }
    }
    assert_eq!((gets, puts), (100, 100));

    // Every stored file is whole: shared ones are one of their versions,
    // own ones are exactly what was sent.
    for (name, hashes) in &versions {
        let stored = blake3_hex(&std::fs::read(server.root().join(name)).unwrap());
        assert!(hashes.contains(&stored), "{name} holds a version never written");
    }
    for i in (0..CLIENTS).filter(|i| i % 4 == 3) {
        let sent = std::fs::read(src.join(format!("own-{i}.bin"))).unwrap();
        assert_eq!(std::fs::read(server.root().join(format!("own/{i}.bin"))).unwrap(), sent);
    }
    let status = server.status();
    assert_eq!(status["counters"]["transfers_completed"].as_u64().unwrap(), CLIENTS as u64);
}

enum Job {
    Get(PathBuf),
    Put(PathBuf),
}
