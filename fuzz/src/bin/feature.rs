//! Fuzz target `feature`: one feature control as JSON bytes (a Redis hash field, a change
//! message's body, one entry of the flags file) through the model's validation
//! (`Feature::from_slice`). An accepted feature must pass `check_feature`: its key, validation,
//! size rule, a re-encoding that validates to the same feature, and a compilation without error
//! whose evaluations succeed. A rejected one must be rejected again from its JSON tree.

use flagrelay::fuzzing::Feature;
use flagrelay_fuzz::check_feature;

fn run(data: &[u8]) {
    let key = "f";
    match Feature::from_slice(key, data) {
        Ok(f) => check_feature(key, &f),
        Err(e) => {
            assert_eq!(e.key, key);
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
                assert!(Feature::from_value(key, v).is_err(), "rejected from bytes ({}), accepted from the tree", e.reason);
            }
        }
    }
}

fn main() {
    flagrelay_fuzz::main(run);
}
