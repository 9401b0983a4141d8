use super::*;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "state-store-{name}-{}-{}",
        std::process::id(),
        crate::time::now_micros()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn complete(store: &CheckpointStore, id: u64, state: &[u8]) {
    let saved = store
        .put_state(id, "window", "window", "f1", state)
        .await
        .unwrap();
    store
        .put_manifest(&Manifest {
            format_version: FORMAT_VERSION,
            pipeline: "p".into(),
            checkpoint_id: id,
            completed_at_micros: 0,
            components: vec![saved],
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn the_newest_intact_checkpoint_is_restored_and_damaged_ones_are_skipped() {
    let dir = temp_dir("newest");
    let store = CheckpointStore::open(dir.to_str().unwrap(), "p", 3).unwrap();
    assert!(
        store.newest().await.unwrap().is_none(),
        "nothing on a first start"
    );
    complete(&store, 1, b"one").await;
    complete(&store, 2, b"two").await;
    complete(&store, 3, b"three").await;
    // Checkpoint 4 crashed before its manifest.
    store
        .put_state(4, "window", "window", "f1", b"four")
        .await
        .unwrap();
    let restored = store.newest().await.unwrap().unwrap();
    assert_eq!(restored.manifest.checkpoint_id, 3);
    assert_eq!(restored.highest_id, 4);
    assert_eq!(
        restored.states,
        vec![("window".to_string(), b"three".to_vec())]
    );

    // A flipped byte in checkpoint 3's state: checkpoint 2 is used.
    let file = dir.join("p").join(checkpoint_dir(3)).join("window.state");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();
    let restored = store.newest().await.unwrap().unwrap();
    assert_eq!(restored.manifest.checkpoint_id, 2);
    assert_eq!(restored.states[0].1, b"two");

    // A truncated state file: checkpoint 1.
    let file = dir.join("p").join(checkpoint_dir(2)).join("window.state");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 2]).unwrap();
    let error = store.load(2).await.unwrap_err().to_string();
    assert!(
        error.contains("chk-00000000000000000002/window.state"),
        "{error}"
    );
    assert!(error.contains("truncated"), "{error}");
    assert_eq!(
        store
            .newest()
            .await
            .unwrap()
            .unwrap()
            .manifest
            .checkpoint_id,
        1
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn cleaning_keeps_the_newest_complete_checkpoints_and_what_is_in_progress() {
    let dir = temp_dir("clean");
    let store = CheckpointStore::open(dir.to_str().unwrap(), "p", 2).unwrap();
    for id in 1..=5 {
        complete(&store, id, b"s").await;
    }
    // An abandoned checkpoint between complete ones, and one in progress.
    store
        .put_state(6, "window", "window", "f1", b"x")
        .await
        .unwrap();
    complete(&store, 7, b"s").await;
    store
        .put_state(8, "window", "window", "f1", b"x")
        .await
        .unwrap();
    let removed = store.clean(7).await.unwrap();
    assert_eq!(removed, 5, "1-4 and the abandoned 6");
    let mut left: Vec<String> = std::fs::read_dir(dir.join("p"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec![checkpoint_dir(5), checkpoint_dir(7), checkpoint_dir(8)]
    );
    let _ = std::fs::remove_dir_all(dir);
}
