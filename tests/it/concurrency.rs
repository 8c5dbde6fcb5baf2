//! Many processes updating the store at once lose no update.

use std::process::Stdio;

use crate::support::{TestAccount, TestEnv};

fn spawn_all(env: &TestEnv, commands: Vec<Vec<String>>) {
    let children: Vec<_> = commands
        .iter()
        .map(|args| {
            env.std_cmd()
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (child, args) in children.into_iter().zip(&commands) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn concurrent_imports_and_labels_are_all_kept() {
    const N: usize = 24;
    let env = TestEnv::new();
    let ids: Vec<String> = (0..N).map(|i| format!("acc-{i:02}")).collect();
    let imports = ids
        .iter()
        .map(|id| {
            let path = env.dir.path().join(format!("{id}.json"));
            std::fs::write(&path, TestAccount::new(id).auth_json()).unwrap();
            vec!["import".into(), path.to_string_lossy().into_owned()]
        })
        .collect();
    spawn_all(&env, imports);
    let store = env.read_store();
    let accounts = store["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), N, "every import is in the store");
    let mains = accounts.iter().filter(|a| a["role"] == "main").count();
    assert_eq!(mains, 1, "exactly one account became main");

    let labels = ids
        .iter()
        .map(|id| {
            vec![
                "accounts".into(),
                "label".into(),
                id.clone(),
                format!("label-{id}"),
            ]
        })
        .collect();
    spawn_all(&env, labels);
    let store = env.read_store();
    for a in store["accounts"].as_array().unwrap() {
        assert_eq!(a["label"], format!("label-{}", a["id"].as_str().unwrap()));
    }
}
