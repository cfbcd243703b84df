//! `GET /api/v1/events` never answers with the whole history: without a limit it gives the
//! newest 100, a limit is a whole number from 1 to 10,000, and a bad limit or `after` is a 400
//! that says what is allowed (it was `[]` for `limit=-1`, and everything without a limit).

use crate::support::controller::TestController;

#[tokio::test]
async fn event_listings_are_bounded_and_bad_limits_refused() {
    let controller = TestController::start();
    let api = controller.http();
    api.add_idle_machine("node-1", "52:54:00:ee:10:01").await;
    // 150 refusals, one event each: lock is refused for a new machine.
    for _ in 0..150 {
        let (code, _) = api
            .post("/machines/node-1/actions/lock", serde_json::json!({}))
            .await;
        assert_eq!(code, 409);
    }
    let ids = |events: &serde_json::Value| -> Vec<i64> {
        events
            .as_array()
            .expect("a list")
            .iter()
            .map(|event| event["id"].as_i64().unwrap())
            .collect()
    };
    let (code, all) = api.get("/events?limit=10000").await;
    assert_eq!(code, 200);
    let all = ids(&all);
    assert!(all.len() > 150, "{}", all.len());

    // No limit: the newest 100, oldest first.
    let (code, default) = api.get("/events").await;
    assert_eq!(code, 200);
    assert_eq!(ids(&default), all[all.len() - 100..]);
    let (_, some) = api.get("/events?limit=7").await;
    assert_eq!(ids(&some), all[all.len() - 7..]);

    for (query, message) in [
        (
            "limit=-1",
            "limit must be a whole number from 1 to 10000 (got -1)",
        ),
        (
            "limit=0",
            "limit must be a whole number from 1 to 10000 (got 0)",
        ),
        (
            "limit=10001",
            "limit must be a whole number from 1 to 10000 (got 10001)",
        ),
        ("after=-5", "after must be an event id, 0 or more (got -5)"),
    ] {
        let (code, answer) = api.get(&format!("/events?{query}")).await;
        assert_eq!(code, 400, "{query}: {answer}");
        assert_eq!(answer["error"]["message"], message, "{query}");
    }
    // The CLI refuses it before asking, with a non-zero exit.
    let output = controller.fleet(&["events", "--limit=-1"]);
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("-1 is not in 1..=10000"), "{said}");
}
