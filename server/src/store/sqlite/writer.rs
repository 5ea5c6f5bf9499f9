//! The writer and the checkpointer of the embedded store: group commit (see the module above).

use rusqlite::{Connection, TransactionBehavior};
use std::sync::mpsc;

/// Most steps committed together.
pub const MAX_BATCH: usize = 256;

/// How long a batch under load waits for more steps before it commits. Measured in storms of
/// 100 installers (interleaved A/B runs): 5 ms costs about 9 % less server CPU per enrollment
/// than 2 ms; 10 ms saves about 5 % more, but each step of a fleet arriving at a moderate rate
/// then waits up to 10 ms. The price at half capacity (muster-storm, 1,000 hosts arriving at
/// ~650/s, 2-core VM, 2026-12-03): open-loop p50 13 ms with this gather, 5.6 ms gathering
/// 1 ms (server CPU at 100 concurrent +15 %), 4.5 ms gathering only batches of 8 or more
/// (+8 %). Each enrollment is two steps, so it pays the gather twice. Measured again with
/// `muster-storm run --only muster,muster-b --against` (5 rounds, 2026-12-03), against this
/// gather: gathering only batches of 8 or more, open-loop p50 5.0 ms but p99 38.6 ms at half
/// capacity (21.6 ms with this one), CPU within noise; never gathering, p50 10.8 ms and p99
/// 289 ms (a fleet's burst commits in many small batches and the writer falls behind);
/// gathering 2 ms from batches of 4, p50 9.9 ms, p99 36.6 ms, CPU +13 %. So it stays: its
/// tail and its CPU are the best measured, at the price of the p50.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// A step for the writer: run inside the batch's transaction; what it returns is called with
/// whether the batch committed.
pub(super) type Step = Box<dyn FnOnce(&mut rusqlite::Transaction<'_>) -> Done + Send>;
pub(super) type Done = Box<dyn FnOnce(bool) + Send>;

/// How often the checkpointer copies the write-ahead log into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Log pages past which the writer checkpoints itself (SQLite's default is 1,000).
pub(super) const WRITER_CHECKPOINT_PAGES: i64 = 10_000;

/// The writer thread: batches of queued steps, one transaction and one commit each.
pub(super) fn write_loop(mut conn: Connection, queue: mpsc::Receiver<Step>) {
    while let Ok(first) = queue.recv() {
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, "store: cannot begin a transaction");
                // Dropping the step drops its reply: the caller hears the store is unavailable.
                drop(first);
                continue;
            }
        };
        let mut done = vec![first(&mut tx)];
        // An error SQLite answers by rolling back the whole transaction (a full disk, an I/O
        // error) ends the batch there: a later step must not run outside it, where its own
        // savepoint would commit it alone. The commit below then fails for every step taken.
        let gone = |tx: &rusqlite::Transaction<'_>| tx.is_autocommit();
        let take = |done: &mut Vec<Done>, tx: &mut rusqlite::Transaction<'_>| {
            while done.len() < MAX_BATCH && !gone(tx) {
                match queue.try_recv() {
                    Ok(step) => done.push(step(tx)),
                    Err(_) => break,
                }
            }
        };
        take(&mut done, &mut tx);
        // Under load (more than one step was waiting), gather a little longer: a batch's pages
        // are written and synced once however many steps share them, so fewer, larger batches
        // write far less. The writer sleeps through the gathering rather than waiting on the
        // queue, so the steps queued meanwhile need not wake it one by one. A lone step (one
        // host enrolling) commits at once.
        if done.len() > 1 && done.len() < MAX_BATCH && !gone(&tx) {
            std::thread::sleep(GATHER);
            take(&mut done, &mut tx);
        }
        let committed = match tx.commit() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "store: commit failed");
                false
            }
        };
        // Answered from this thread, one after another. (Handing the lot to one task on the
        // runtime, to wake it once per batch, changed nothing `scripts/syscalls.sh` counts.)
        for d in done {
            d(committed);
        }
    }
}

/// The checkpointer: a passive checkpoint every [`CHECKPOINT_EVERY`], which copies committed
/// pages into the database file without holding up the writer or the readers; the log starts
/// over once it has all been copied.
pub(super) fn checkpoint_loop(conn: Connection, stopped: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "store: checkpoint failed");
        }
    }
}
