//! The webhook channel: the notice as JSON, POSTed to a URL (an ntfy
//! topic, a Slack bridge, a home-made receiver).

/// POSTs `json` to `url`; an error names the status or the failure.
pub async fn send(url: &str, json: &[u8]) -> Result<(), String> {
    let client = crate::oauth::http_client(super::SEND_TIMEOUT);
    let answer = client
        .post(url)
        .header("content-type", "application/json")
        .body(json.to_vec())
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", answer.status()))
    }
}
