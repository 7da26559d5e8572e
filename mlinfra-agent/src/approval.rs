//! Human approval of a tool call that destroys something, through MCP elicitation: the server
//! asks the client to ask its user, and acts only on an explicit yes.
//!
//! - A 2025-11-25 session: an `elicitation/create` request to the client, awaited.
//! - 2026-07-28 (stateless, where a server may not send requests): the call returns an
//!   `input_required` result carrying the question and a sealed `requestState` naming what
//!   is approved (the tool, the object, its state); the client asks its user and calls again
//!   with the answer in `inputResponses` and the state echoed. An answer without the state it
//!   was asked with, or for another object or an object changed since, counts for nothing.
//! - A client without the elicitation capability cannot ask: the call is refused, never
//!   carried out unasked.
//!
//! The answer is the client's word for its user's: a client could answer without asking, as
//! it could call the tool without showing it. Approval guards against a model acting alone,
//! not against a hostile client.

use rmcp::RoleServer;
use rmcp::model::{
    ElicitRequest, ElicitRequestParams, ElicitationAction, ElicitationSchema, InputRequest,
    InputRequests, InputRequiredResult, InputResponses, ProtocolVersion, RequestStateCodec,
    SealOptions,
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

/// Signs the question an `input_required` approval asks, so the retry's answer counts only
/// for that question (the same tool, object and state), not another one it is replayed at.
/// The key is random per process: a question outlives neither a restart nor [`SEAL_TTL`].
#[derive(Debug)]
pub(crate) struct Seal(RequestStateCodec);

/// How long an asked question stays answerable.
pub const SEAL_TTL: std::time::Duration = std::time::Duration::from_secs(600);

impl Seal {
    /// A fresh random key.
    pub(crate) fn new() -> std::io::Result<Self> {
        let mut key = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
        RequestStateCodec::try_new(key.to_vec())
            .map(Self)
            .map_err(std::io::Error::other)
    }
}

/// Asks the user `question` about `subject` (what the approval is for: the tool, the object
/// and its state, so a changed object is asked about again), or reads the answer a
/// 2026-07-28 retry carries with the sealed `request_state` it was asked with.
pub(crate) async fn ask(
    cx: &RequestContext<RoleServer>,
    seal: Option<&Seal>,
    responses: Option<&InputResponses>,
    request_state: Option<&str>,
    subject: &str,
    question: &str,
) -> Approval {
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
    let stateless = cx
        .protocol_version()
        .is_some_and(|version| version >= ProtocolVersion::V_2026_07_28);
    let seal = match (stateless, seal) {
        (true, None) => {
            return Approval::Refused("no random key to seal the question with: cannot ask".into());
        }
        (_, seal) => seal,
    };
    if let (Some(seal), Some(answer)) = (
        seal.filter(|_| stateless),
        responses.and_then(|r| r.get(APPROVAL_KEY)),
    ) {
        // An answer counts only with the sealed question it answers, for this subject.
        let asked = request_state
            .and_then(|state| seal.0.open_json::<String>(state).ok())
            .is_some_and(|asked| asked == subject);
        return if asked {
            read(answer)
        } else {
            Approval::Refused(
                "the answer does not come with the question asked (a missing, altered, expired \
                 or other call's requestState, or the object changed since): ask again"
                    .into(),
            )
        };
    }
    let params = match form(question) {
        Ok(params) => params,
        Err(reason) => return Approval::Refused(reason),
    };
    if let Some(seal) = seal.filter(|_| stateless) {
        let sealed = seal
            .0
            .seal_json_with(&subject, &SealOptions::new().ttl(SEAL_TTL));
        let sealed = match sealed {
            Ok(sealed) => sealed,
            Err(error) => return Approval::Refused(format!("sealing the question: {error}")),
        };
        let mut requests = InputRequests::new();
        requests.insert(
            APPROVAL_KEY.to_owned(),
            InputRequest::Elicitation(ElicitRequest::new(params)),
        );
        return Approval::Ask(InputRequiredResult::new(Some(requests), Some(sealed)));
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
