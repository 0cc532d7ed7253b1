//! The change feed's cursor: late commits are delivered, nothing twice.

use capstan_db::{append_change, on_pool, BeginWrite, Db, FeedCursor};
use capstan_tests::Ctx;

capstan_tests::on_both_backends!(
    a_cursor_starts_after_pruned_rows,
    a_write_transaction_that_reads_first_survives_a_concurrent_commit,
);

/// A write transaction reads, another connection commits, then the transaction writes. On
/// SQLite a deferred `BEGIN` fails that write at once with `SQLITE_BUSY_SNAPSHOT` (a 503 to the
/// caller, whatever the busy timeout); `begin_write` takes the write lock first, so the other
/// commit waits its turn and both succeed.
async fn a_write_transaction_that_reads_first_survives_a_concurrent_commit(ctx: &Ctx) {
    let db = ctx.db();
    on_pool!(&db, |p| {
        let mut tx = p.begin_write().await.unwrap();
        let (before,): (i64,) = sqlx::query_as("SELECT count(*) FROM core_changes")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let other = {
            let db = db.clone();
            tokio::spawn(async move { db.publish_change("t", "x", "other", 1).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        append_change!(tx, "t", "x", "mine", 1).await.unwrap();
        tx.commit().await.unwrap();
        other.await.unwrap().unwrap();
        let (after,): (i64,) = sqlx::query_as("SELECT count(*) FROM core_changes")
            .fetch_one(p)
            .await
            .unwrap();
        assert_eq!(after, before + 2);
    });
}

/// Once pruning has emptied the table, a new cursor still starts after the last position handed
/// out, not at 0 (where every later row would look like a jump over thousands of gaps).
async fn a_cursor_starts_after_pruned_rows(ctx: &Ctx) {
    let db = ctx.db();
    for i in 0..5 {
        db.publish_change("t", "x", &format!("k{i}"), 1)
            .await
            .unwrap();
    }
    assert_eq!(db.prune_changes(i64::MAX).await.unwrap(), 5);
    let mut cursor = FeedCursor::at_end(&db).await.unwrap();
    assert!(cursor.position() >= 5, "{}", cursor.position());
    assert!(cursor.poll(&db).await.unwrap().is_empty());
    db.publish_change("t", "x", "after", 1).await.unwrap();
    let got: Vec<String> = cursor
        .poll(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.key)
        .collect();
    assert_eq!(got, ["after"]);
}

/// Postgres assigns sequence values before commit: a row committed after a later one must still
/// be delivered (and only once); a rolled-back position is simply never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_is_delivered_once() {
    let Some(ctx) = Ctx::postgres().await else {
        return;
    };
    let db = ctx.db();
    let Db::Postgres(pool) = &db else {
        unreachable!()
    };
    let mut cursor = FeedCursor::at_end(&db).await.unwrap();
    let mut slow = pool.begin().await.unwrap();
    append_change!(slow, "t", "x", "late", 1).await.unwrap();
    let mut doomed = pool.begin().await.unwrap();
    append_change!(doomed, "t", "x", "rolled-back", 1)
        .await
        .unwrap();
    // More rows commit meanwhile than any fixed look-behind window would cover.
    for i in 0..100 {
        db.publish_change("t", "x", &format!("early{i}"), 1)
            .await
            .unwrap();
    }

    let keys = |v: Vec<capstan_db::Change>| v.into_iter().map(|c| c.key).collect::<Vec<_>>();
    let early = keys(cursor.poll(&db).await.unwrap());
    assert_eq!(early.len(), 100);
    assert_eq!(early[0], "early0");
    slow.commit().await.unwrap();
    doomed.rollback().await.unwrap();
    assert_eq!(keys(cursor.poll(&db).await.unwrap()), ["late"]);
    db.publish_change("t", "x", "next", 1).await.unwrap();
    assert_eq!(keys(cursor.poll(&db).await.unwrap()), ["next"]);
    assert!(cursor.poll(&db).await.unwrap().is_empty());
    ctx.cleanup().await;
}
