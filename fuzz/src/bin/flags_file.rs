//! Fuzz target `flags_file`: the flags file as the watcher reads it (`upstream::file`'s
//! `parse_wanted`, for the environments `production` and `staging`) and as `flags import --all`
//! reads it (`upstream::file::parse`, the file whole). Both must agree with the file's JSON
//! tree: refused as a whole exactly when it is not JSON or not an object; each configured
//! environment malformed exactly when its value is not an object, with every feature of it
//! listed in order; the others listed as unknown. Every accepted feature passes `check_feature`.

use flagrelay::fuzzing::{flags_file, parse_flags_file, FileError};
use flagrelay_fuzz::check_feature;
use serde_json::Value;

const WANTED: [&str; 2] = ["production", "staging"];

fn run(data: &[u8]) {
    let watched = flags_file(data, &WANTED);
    let whole = parse_flags_file(data);
    let tree = serde_json::from_slice::<Value>(data);
    let root = match (&tree, &watched, &whole) {
        (Ok(Value::Object(root)), Ok(_), _) => root,
        (Ok(Value::Object(_)), Err(e), _) => panic!("an object refused as a whole: {e}"),
        (Ok(_), Err(FileError::NotAnObject), Err(FileError::NotAnObject)) => return,
        (Err(_), Err(FileError::Json(_)), Err(FileError::Json(_))) => return,
        (t, w, f) => panic!("tree {t:?} / watcher {w:?} / whole {f:?}"),
    };
    let Ok(watched) = watched else { return };
    let unknown: Vec<&String> = root.keys().filter(|k| !WANTED.contains(&k.as_str())).collect();
    assert_eq!(watched.unknown.iter().collect::<Vec<_>>(), unknown);
    let first_bad = root.iter().find(|(_, v)| !v.is_object()).map(|(k, _)| k);
    match (&whole, first_bad) {
        (Ok(envs), None) => assert_eq!(envs.len(), root.len()),
        (Err(FileError::EnvNotAnObject(id)), Some(bad)) => assert_eq!(id, bad),
        (w, b) => panic!("whole {w:?} but first non-object environment {b:?}"),
    }
    let wanted: Vec<(&String, &Value)> = root.iter().filter(|(k, _)| WANTED.contains(&k.as_str())).collect();
    assert_eq!(watched.envs.len(), wanted.len());
    let mut envs: Vec<&(String, _)> = watched.envs.iter().collect();
    envs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut wanted = wanted;
    wanted.sort_by(|a, b| a.0.cmp(b.0));
    for ((id, part), (tid, tv)) in envs.into_iter().zip(wanted) {
        assert_eq!(id, tid);
        match (part, tv) {
            (Ok(features), Value::Object(m)) => {
                assert_eq!(features.iter().map(|(k, _)| k).collect::<Vec<_>>(), m.keys().collect::<Vec<_>>());
                for (k, f) in features {
                    match f {
                        Ok(f) => check_feature(k, f),
                        Err(e) => assert_eq!(&e.key, k),
                    }
                }
            }
            (Err(_), v) => assert!(!v.is_object(), "environment {id} malformed but an object"),
            (Ok(_), v) => panic!("environment {id} read as features but is {v}"),
        }
    }
}

fn main() {
    flagrelay_fuzz::main(run);
}
