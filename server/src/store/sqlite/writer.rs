//! The writer and the checkpointer of the embedded store: group commit (see the module above).

use rusqlite::{Connection, TransactionBehavior};
use std::sync::mpsc;

/// Most steps committed together.
pub const MAX_BATCH: usize = 256;

/// How long a batch under load waits for more steps before it commits. A commit costs the
/// store's threads about as much whether it holds one step or forty (the log's fixed pages,
/// the fsync), so the longer the gather, the less CPU per enrollment and the longer each step
/// waits; each enrollment is two steps, so it pays the gather twice. Measured with
/// `muster-storm run --only muster,muster-b --against` against the policies tried (five to
/// seven rounds each, two 2-core VMs, 2026-12-03; docs/benchmarks.md lists them): gathering
/// 1 or 2 ms, only from 4 or 8 steps waiting, until 5 ms after the oldest step, or 250 µs per
/// waiting step, brings the open-loop p50 at half capacity from 13–18 ms to 4.4–10 ms but costs
/// the store's threads 0.01–0.08 ms more per enrollment at 100 concurrent (server CPU +6 to
/// +16 %), and some of them a worse p99 (a fleet's burst commits in small batches and the
/// writer falls behind); never gathering, p99 289 ms. So it gathers 5 ms, from two steps
/// waiting, and only while [`GATHER_FROM`] more joins and commits are on their way.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// Joins and commits being answered besides a batch's own steps, from which the batch gathers
/// (as PostgreSQL's `commit_siblings` gates its `commit_delay`): a gather pays only when more
/// steps are about to come, and the steps waiting at the writer say little about that (under
/// a 100-host storm most of the hosts are in their handshake or their checks). Counted at the
/// writer's decision (2026-12-03): 15–33–50 (10th, 50th, 90th percentile) under the 100-host
/// storm, 0–1–10 with hosts arriving at half its capacity. From 8, A/B against the gather
/// regardless (`--against`, 7 rounds): at half capacity p50 5.3 ms and p99 16.5 ms against
/// 14.7 and 28.7; at 80 % p99 73.5 ms against 137; at 100 concurrent server CPU 0.97× [0.87,
/// 1.04] and the store's threads 0.120 ms against 0.113. From 16 and from 32 it gathered too
/// seldom under the storm (store's threads 0.127 and 0.147 ms).
pub const GATHER_FROM: usize = 8;

/// Whether a batch holding `taken` steps gathers for more, with `enrolling` joins and commits
/// being answered in all (its own steps among them).
fn gathers(taken: usize, enrolling: usize) -> bool {
    taken > 1 && taken < MAX_BATCH && enrolling.saturating_sub(taken) >= GATHER_FROM
}

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
        // Under load (more than one step was waiting, more on their way), gather a little
        // longer: a batch's pages are written and synced once however many steps share them,
        // so fewer, larger batches write far less. The writer sleeps through the gathering
        // rather than waiting on the queue, so the steps queued meanwhile need not wake it one
        // by one. A lone step (one host enrolling), or a few hosts at a time, commit at once.
        if gathers(done.len(), crate::store::Enrolling::now()) && !gone(&tx) {
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

#[cfg(test)]
mod tests {
    use super::{gathers, GATHER_FROM, MAX_BATCH};

    #[test]
    fn a_batch_gathers_only_with_steps_waiting_and_more_on_their_way() {
        // A lone step commits at once, however busy the server.
        assert!(!gathers(1, 1000));
        // Two steps waiting, but no more joins or commits being answered: at once.
        assert!(!gathers(2, 2));
        assert!(!gathers(2, 2 + GATHER_FROM - 1));
        assert!(gathers(2, 2 + GATHER_FROM));
        // A full batch commits.
        assert!(!gathers(MAX_BATCH, MAX_BATCH + 1000));
        // A count read while steps were being answered may lag behind the batch: no underflow.
        assert!(!gathers(5, 0));
    }
}
