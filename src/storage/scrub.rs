//! The scrub: while the node runs, read every byte of the data folder's
//! files back now and then, so damage is found while every acknowledged
//! increment is still in memory to repair it from, not at the next start.
//!
//! A pass walks the engine's files (log segments one at a time, then the
//! B-tree) and sleeps between steps so that it reads at most `rate` bytes
//! a second on average. What it finds is logged at ERROR, counted
//! (`tally_storage_damage_total`), listed in `/status`, and repaired from
//! memory, which holds every counter whole: a damaged log segment by
//! folding the log into the B-tree at once (the overlay holds every record
//! after the B-tree's position), a B-tree that fails redb's check by
//! writing a new one from memory. The B-tree is checked by closing and
//! opening it again (redb verifies page checksums only when it opens a
//! file, and serves later reads from its cache): pulls from peers and log
//! folds wait for that check, increments and reads do not.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info};

use super::{ScrubAt, Store, StoreError};

impl Store {
    /// One scrub pass over the engine's files, reading at most `rate` bytes
    /// a second. Returns the bytes read and the places found damaged.
    pub async fn scrub(&self, rate: u64) -> Result<(u64, u64), StoreError> {
        let started = Instant::now();
        let mut at = ScrubAt::Start;
        let (mut bytes, mut damage) = (0u64, 0u64);
        let health = &self.inner.shared.health;
        let metrics = &self.inner.metrics;
        loop {
            let step = self.engine_call(move |e| e.scrub(at)).await?;
            for what in &step.damage {
                error!(damage = %what, "storage damage found by the scrub; repairing it from memory");
                health.damage_found(what.clone());
                damage += 1;
            }
            if step.rebuild {
                self.rebuild().await?;
            }
            bytes += step.bytes;
            metrics.storage_scrubbed_bytes.inc_by(step.bytes);
            if step.next == ScrubAt::Done {
                break;
            }
            at = step.next;
            // Paced: a pass reads `rate` bytes a second at most.
            let due = started + Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
            tokio::time::sleep_until(due).await;
        }
        let took = started.elapsed();
        health.scrubbed(bytes, took, damage);
        if damage == 0 {
            info!(bytes, ?took, "storage scrub found no damage");
        }
        Ok((bytes, damage))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::logged::{LogEngine, LogLimits, LogOptions};
    use crate::storage::redb::DB_FILE;
    use crate::storage::simdisk::SimDisk;
    use crate::storage::{Engine, StoreDeps, StoreOptions};

    fn options(fold: usize) -> LogOptions {
        LogOptions {
            limits: LogLimits {
                names: fold,
                bytes: u64::MAX,
            },
            step: 4096,
            ..LogOptions::default()
        }
    }

    async fn store_on(disk: &SimDisk, fold: usize) -> Store {
        let engine = Arc::new(LogEngine::on(Arc::new(disk.clone()), options(fold)).unwrap());
        Store::with_engine(engine, 1, StoreOptions::default(), StoreDeps::default())
            .unwrap()
            .store
    }

    async fn fill(store: &Store, names: usize) {
        for i in 0..names {
            store
                .increment(vec![(format!("name-{i:02}"), i as u64 + 1)])
                .await
                .unwrap();
        }
    }

    /// Flips a bit inside block `block` of the log's first segment.
    fn flip_block(disk: &SimDisk, block: u64) {
        let segment = disk
            .paths()
            .into_iter()
            .find(|p| p.starts_with("log/"))
            .unwrap();
        disk.flip(&segment, (block * 512 + 40) * 8);
    }

    fn reopen(disk: &SimDisk, fold: usize) -> crate::storage::Loaded {
        LogEngine::on(Arc::new(disk.clone()), options(fold))
            .unwrap()
            .load(1)
            .unwrap()
    }

    /// A synced log record damaged while the node runs: the scrub finds it
    /// and folds the log at once, so the next start finds nothing lost.
    #[tokio::test(start_paused = true)]
    async fn the_scrub_repairs_a_damaged_log_from_memory() {
        let disk = SimDisk::new("n1", 1);
        let store = store_on(&disk, 1000).await;
        fill(&store, 10).await;
        let before = reopen(&disk.fork("copy"), 1000);
        flip_block(&disk, 3);
        assert_eq!(store.scrub(1 << 20).await.unwrap().1, 1);
        let report = store.health();
        assert_eq!(report.damage_found, 1);
        assert!(
            report.damage[0].contains("at byte 1536"),
            "{:?}",
            report.damage
        );
        assert_eq!(report.scrub.unwrap().passes, 1);
        store.close().await;
        drop(store);
        let after = reopen(&disk, 1000);
        assert!(after.salvage.is_none(), "{:?}", after.salvage);
        assert_eq!(after.counters, before.counters);
        assert_eq!(after.incarnation, before.incarnation);
        // A clean pass finds nothing.
        let store = store_on(&disk, 1000).await;
        assert_eq!(store.scrub(1 << 20).await.unwrap().1, 0);
    }

    /// The B-tree damaged on disk while the node runs (a key of a row,
    /// here): the scrub's check finds it and the B-tree is rebuilt from
    /// memory; the next start loads every counter as it was, under the
    /// same incarnation, with nothing to salvage.
    #[tokio::test(start_paused = true)]
    async fn the_scrub_rebuilds_a_damaged_b_tree_from_memory() {
        let disk = SimDisk::new("n1", 1);
        let store = store_on(&disk, 2).await;
        fill(&store, 9).await;
        let before = reopen(&disk.fork("copy"), 2);
        let bytes = disk.contents(DB_FILE).unwrap();
        let mut flipped = 0;
        for at in 0..bytes.len() - 7 {
            if &bytes[at..at + 7] == b"name-03" {
                disk.flip(DB_FILE, (at as u64 + 6) * 8);
                flipped += 1;
            }
        }
        assert!(flipped > 0);
        let (_, damage) = store.scrub(1 << 20).await.unwrap();
        assert_eq!(damage, 1, "{:?}", store.health().damage);
        assert!(
            disk.paths().iter().any(|p| p.ends_with("-tally.redb")),
            "set aside"
        );
        // Writes go on, and so does the next pass, clean.
        store.increment(vec![("name-03".into(), 1)]).await.unwrap();
        assert_eq!(store.scrub(1 << 20).await.unwrap().1, 0);
        store.close().await;
        drop(store);
        let after = reopen(&disk, 2);
        assert!(after.salvage.is_none(), "{:?}", after.salvage);
        assert_eq!(after.incarnation, before.incarnation);
        for (name, c) in &before.counters {
            let extra = u128::from(name == "name-03");
            assert_eq!(after.counters[name].value(), c.value() + extra, "{name}");
        }
    }

    /// Damage that loses no record (here a block of garbage between two
    /// whole records) is not salvaged, but it is shown: `/status` counts it
    /// and names the place, under the same incarnation, with every counter.
    #[tokio::test(start_paused = true)]
    async fn damage_that_loses_no_record_is_still_reported() {
        let disk = SimDisk::new("n1", 1);
        let store = store_on(&disk, 1000).await;
        fill(&store, 3).await;
        store.close().await;
        drop(store);
        let before = reopen(&disk.fork("copy"), 1000);
        let segment = disk
            .paths()
            .into_iter()
            .find(|p| p.starts_with("log/"))
            .unwrap();
        let data = disk.contents(&segment).unwrap();
        let mut holed = data[..512].to_vec();
        holed.extend_from_slice(&[0xa5; 512]);
        holed.extend_from_slice(&data[512..data.len() - 512]);
        disk.put(&segment, &holed);

        let store = store_on(&disk, 1000).await;
        let report = store.health();
        assert_eq!(report.damage_found, 1, "{report:?}");
        assert!(report.damage[0].contains("at byte 512"), "{report:?}");
        assert!(report.salvaged.is_empty(), "{report:?}");
        store.close().await;
        drop(store);
        let after = reopen(&disk, 1000);
        assert_eq!(after.incarnation, before.incarnation);
        assert_eq!(after.counters, before.counters);
    }

    /// Damage found when storage reopens after an I/O error (the log, here)
    /// is repaired from memory too: the node stays the same incarnation,
    /// loses nothing, and writes again.
    #[tokio::test(start_paused = true)]
    async fn damage_found_when_reopening_is_repaired_from_memory() {
        use crate::storage::simdisk::SimFault;
        let disk = SimDisk::new("n1", 1);
        let store = store_on(&disk, 1000).await;
        fill(&store, 10).await;
        let before = reopen(&disk.fork("copy"), 1000);
        flip_block(&disk, 2);
        disk.inject(SimFault::FailSync);
        assert!(store.increment(vec![("x".into(), 1)]).await.is_err());
        disk.inject(SimFault::None);
        let mut healed = false;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if store.increment(vec![("x".into(), 1)]).await.is_ok() {
                healed = true;
                break;
            }
        }
        assert!(healed, "{:?}", store.health());
        assert!(store.health().damage_found >= 1);
        store.close().await;
        drop(store);
        let after = reopen(&disk, 1000);
        assert!(after.salvage.is_none(), "{:?}", after.salvage);
        assert_eq!(after.incarnation, before.incarnation);
        for (name, c) in &before.counters {
            assert_eq!(after.counters.get(name), Some(c), "{name}");
        }
    }
}
