//! The change feed's cursor: late commits are delivered, nothing twice.

use capstan_db::{append_change, Db, FeedCursor};
use capstan_tests::Ctx;

capstan_tests::on_both_backends!(a_cursor_starts_after_pruned_rows);

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
