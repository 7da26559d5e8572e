//! Human approval of a tool call that destroys something, through MCP elicitation: the server
//! asks the client to ask its user, and acts only on an explicit yes.
//!
//! - A 2025-11-25 session: an `elicitation/create` request to the client, awaited.
//! - 2026-07-28 (stateless, where a server may not send requests): the call returns an
//!   `input_required` result carrying the question; the client asks its user and calls again
//!   with the answer in `inputResponses`.
//! - A client without the elicitation capability cannot ask: the call is refused, never
//!   carried out unasked.
//!
//! The answer is the client's word for its user's: a client could answer without asking, as
//! it could call the tool without showing it. Approval guards against a model acting alone,
//! not against a hostile client.

use rmcp::RoleServer;
use rmcp::model::{
    ElicitRequest, ElicitRequestParams, ElicitationAction, ElicitationSchema, InputRequest,
    InputRequests, InputRequiredResult, InputResponses, ProtocolVersion,
};
use rmcp::service::RequestContext;
use serde_json::{Value, json};

/// The key of the approval question in `inputRequests` / `inputResponses`.
pub const APPROVAL_KEY: &str = "approve";

/// What the user said.
#[derive(Debug)]
pub(crate) enum Approval {
    /// Yes: go ahead.
    Granted,
    /// No, or no way to ask: why, for the tool's error text.
    Refused(String),
    /// Ask through this `input_required` result (2026-07-28).
    Ask(InputRequiredResult),
}

/// Asks the user `question` (or reads the answer a 2026-07-28 retry carries).
pub(crate) async fn ask(
    cx: &RequestContext<RoleServer>,
    responses: Option<&InputResponses>,
    question: &str,
) -> Approval {
    if let Some(answer) = responses.and_then(|r| r.get(APPROVAL_KEY)) {
        return read(answer);
    }
    let can_ask = cx
        .client_capabilities()
        .is_some_and(|capabilities| capabilities.elicitation.is_some());
    if !can_ask {
        return Approval::Refused(
            "this call destroys data and needs its user's approval, but the client cannot ask \
             (it declared no elicitation capability)"
                .into(),
        );
    }
    let params = match form(question) {
        Ok(params) => params,
        Err(reason) => return Approval::Refused(reason),
    };
    let stateless = cx
        .protocol_version()
        .is_some_and(|version| version >= ProtocolVersion::V_2026_07_28);
    if stateless {
        let mut requests = InputRequests::new();
        requests.insert(
            APPROVAL_KEY.to_owned(),
            InputRequest::Elicitation(ElicitRequest::new(params)),
        );
        return Approval::Ask(InputRequiredResult::from_input_requests(requests));
    }
    match cx.peer.create_elicitation(params).await {
        Ok(result) => match serde_json::to_value(result) {
            Ok(answer) => read(&answer),
            Err(error) => Approval::Refused(format!("the answer could not be read: {error}")),
        },
        Err(error) => Approval::Refused(format!("the client could not ask its user: {error}")),
    }
}

/// The question as a form with one required yes/no field.
fn form(question: &str) -> Result<ElicitRequestParams, String> {
    let schema: ElicitationSchema = serde_json::from_value(json!({
        "type": "object",
        "properties": {APPROVAL_KEY: {"type": "boolean", "title": "Approve", "description": question}},
        "required": [APPROVAL_KEY],
    }))
    .map_err(|error| format!("the approval form: {error}"))?;
    Ok(ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: question.to_owned(),
        requested_schema: schema,
    })
}

/// An elicitation result (`{action, content}`): granted only for `accept` with
/// `approve: true`.
fn read(answer: &Value) -> Approval {
    let action = answer
        .get("action")
        .cloned()
        .and_then(|action| serde_json::from_value::<ElicitationAction>(action).ok());
    match action {
        Some(ElicitationAction::Accept) => {
            if answer["content"][APPROVAL_KEY] == true {
                Approval::Granted
            } else {
                Approval::Refused("the user did not approve".into())
            }
        }
        Some(ElicitationAction::Decline) => Approval::Refused("the user declined".into()),
        Some(ElicitationAction::Cancel) => Approval::Refused("the user cancelled".into()),
        _ => Approval::Refused(format!("not an elicitation answer: {answer}")),
    }
}
