//! The writer and the checkpointer of the embedded store: group commit (see the module above).

use rusqlite::{Connection, TransactionBehavior};
use std::sync::mpsc;

/// Most steps committed together.
pub const MAX_BATCH: usize = 256;

/// The longest a batch under load waits for more steps before it commits. A commit's fsync,
/// its log pages and the writer's wake-ups cost the store's threads much the same whether it
/// holds one step or forty, so the fuller the batch, the less CPU per enrollment; each
/// enrollment is two steps, so a host arriving while the writer gathers pays the gather twice.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// How long a batch gathers for each join or commit being answered besides its own steps, up
/// to [`GATHER`] (from 34 of them): about what one core of a server takes to bring one more
/// step to the writer under a storm (0.3 to 0.5 ms of CPU an enrollment, two steps). So a batch
/// waits about as long as the steps already on their way take to come, and no longer: under a
/// 100-host storm (15, 33 and 50 of them at the writer's decisions, 10th, 50th and 90th
/// percentile) it gathers 2.2 ms to the full 5 ms, as before; a burst of hosts arriving at half
/// the server's capacity (8 to 12 of them) makes it gather 1.2 to 1.8 ms rather than 5 ms twice
/// for each host, which held the hosts arriving behind the burst long enough to make the next
/// one (the open loop's p50 at half capacity 3.5 to 11.9 ms over 13 rounds). Measured with
/// `muster-storm run --only muster,muster-b --against … --fleet-rounds 5`, 2026-12-04, three
/// runs: p50 at half capacity 4.4, 4.0 and 3.9 ms (medians of 5, 3 and 5 rounds) against
/// 11.2, 5.1 and 5.1 ms with 5 ms at once; server CPU at 100 concurrent 0.99x, 1.02x and
/// 1.01x theirs (7 rounds; this machine does not resolve 2 %).
const PER_SIBLING: std::time::Duration = std::time::Duration::from_micros(150);

/// Joins and commits being answered besides a batch's own steps, from which the batch gathers
/// (as PostgreSQL's `commit_siblings` gates its `commit_delay`): gathering pays only when more
/// steps are about to come, and the steps already waiting at the writer do not say whether
/// they are. On the one core a server may be given, the writer wakes as soon as one step is
/// queued, before the worker has queued the next, so the writer that gathered whenever two or
/// more steps waited mostly committed small batches under a 100-host storm (4 context
/// switches per enrollment), and yet held every host arriving at half its capacity 5 ms twice
/// (p50 13–15 ms).
/// Measured with `muster-storm run --only muster,muster-b --against`, 7 rounds each, 2026-12-03
/// (earlier policies in docs/benchmarks.md): gathering any batch, a lone step too, once 8 or
/// more joins and commits are being answered besides it, against gathering from two steps
/// waiting with as many: server CPU at 100 concurrent 0.88 and 0.91 times (two runs), the
/// store's threads 0.080–0.083 ms per enrollment instead of 0.120, 1.1 context switches
/// instead of 4. From 16 or 32 it gathered too seldom under the storm.
pub const GATHER_FROM: usize = 8;

/// How long a batch holding `taken` steps gathers for more, with `enrolling` joins and commits
/// being answered in all (its own steps among them); `None`: it commits at once.
fn gather_for(taken: usize, enrolling: usize) -> Option<std::time::Duration> {
    let siblings = enrolling.saturating_sub(taken);
    if taken >= MAX_BATCH || siblings < GATHER_FROM {
        return None;
    }
    let siblings = u32::try_from(siblings).unwrap_or(u32::MAX);
    Some(PER_SIBLING.saturating_mul(siblings).min(GATHER))
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
        // Under load (more steps on their way), gather a little longer: a batch's pages are
        // written and synced once however many steps share them, so fewer, larger batches
        // write far less. The writer sleeps through the gathering rather than waiting on the
        // queue, so the steps queued meanwhile need not wake it one by one. One host
        // enrolling, or a few at a time, commit at once.
        let gather = gather_for(done.len(), crate::store::Enrolling::now());
        if let Some(gather) = gather.filter(|_| !gone(&tx)) {
            std::thread::sleep(gather);
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
    use super::{gather_for, GATHER, GATHER_FROM, MAX_BATCH, PER_SIBLING};

    #[test]
    fn a_batch_gathers_only_while_more_steps_are_on_their_way() {
        // One host enrolling: at once.
        assert_eq!(gather_for(1, 1), None);
        // A lone step gathers when the server is answering many more.
        assert!(gather_for(1, 1 + GATHER_FROM).is_some());
        // Two steps waiting, but no more joins or commits being answered: at once.
        assert_eq!(gather_for(2, 2), None);
        assert_eq!(gather_for(2, 2 + GATHER_FROM - 1), None);
        assert!(gather_for(2, 2 + GATHER_FROM).is_some());
        // A full batch commits.
        assert_eq!(gather_for(MAX_BATCH, MAX_BATCH + 1000), None);
        // A count read while steps were being answered may lag behind the batch: no underflow.
        assert_eq!(gather_for(5, 0), None);
    }

    #[test]
    fn a_batch_gathers_as_long_as_its_siblings_take_to_come_up_to_the_most() {
        assert_eq!(gather_for(1, 1 + GATHER_FROM), Some(PER_SIBLING * 8));
        assert_eq!(gather_for(3, 3 + 20), Some(PER_SIBLING * 20));
        // From 34 siblings on, the most.
        assert_eq!(gather_for(1, 1 + 33), Some(PER_SIBLING * 33));
        assert_eq!(gather_for(1, 1 + 34), Some(GATHER));
        assert_eq!(gather_for(1, usize::MAX), Some(GATHER));
    }
}
