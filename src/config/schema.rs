//! JSON Schema of the fleet file (`fleet schema`), for editors.
pub fn json_schema() -> serde_json::Value {
    serde_json::Value::Null
}
