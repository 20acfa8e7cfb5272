//! The domain models: an Observation (a dataset found at a source), the Ingestion that puts
//! it in the archive, and the Calibration that follows a completed VLA or ALMA ingestion,
//! with the links between them (`model-deps.json` must say the same). Observations have
//! nothing to enact themselves: their sync step records them, so their dependents may proceed.

use crate::steps::prelude::*;

/// Telescope that produced a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Instrument {
    VLA,
    ALMA,
    VLBA,
}

impl Instrument {
    /// The name used in keys, config and capability parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Instrument::VLA => "VLA",
            Instrument::ALMA => "ALMA",
            Instrument::VLBA => "VLBA",
        }
    }

    /// Whether a completed ingestion of this instrument's data is followed by calibration.
    pub fn is_calibrated(self) -> bool {
        matches!(self, Instrument::VLA | Instrument::ALMA)
    }
}

/// What kind of product a dataset is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Product {
    /// A VLA SDM with its BDFs, or an ALMA ASDM.
    Sdm,
    /// ALMA pipeline calibration products to (re)ingest.
    Calibration,
    /// VLBA correlator output.
    CorrelatorOutput,
}

/// One file of a dataset, relative to the dataset's location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    pub path: String,
    pub size: u64,
    /// Modification time in nanoseconds since the epoch: a replaced file moves the generation.
    pub mtime_ns: i64,
}

/// A dataset found at a source. Its key is `<instrument>/<name>` (ALMA calibrations:
/// `ALMA/calibration/<uid>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub instrument: Instrument,
    pub product: Product,
    /// SDM name, ASDM UID or VLBA correlator job.
    pub name: String,
    /// Directory holding the files, or the archive locator for ALMA.
    pub location: String,
    /// The files, with sizes (filesystem sources; empty for ALMA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<DataFile>,
    /// Latest (re)ingestion request time from the source; a newer one re-runs the ingestion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    /// Files the dataset references that had not arrived when it was taken (VLA BDFs, after
    /// `sources.vla.missing_bdf_wait_seconds` or with the marker file): it is ingested
    /// without them, and once more when they land.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_files: Vec<String>,
}

impl Observation {
    /// The store key for this observation.
    pub fn key(&self) -> String {
        match self.product {
            Product::Calibration => {
                format!("{}/calibration/{}", self.instrument.as_str(), self.name)
            }
            _ => format!("{}/{}", self.instrument.as_str(), self.name),
        }
    }
}

/// Observed state of an observation: nothing to observe beyond the bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObservationStatus {}

impl Model for Observation {
    const KIND: &'static str = "Observation";
    type Status = ObservationStatus;
}

/// "This observation must be in the archive." Key: the observation's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ingestion {
    /// Link to the Observation.
    pub observation: String,
    pub instrument: Instrument,
    pub product: Product,
    pub name: String,
    /// The observation generation this ingestion follows: new BDFs or a reingestion request
    /// move it, so the ingestion runs again.
    pub observation_generation: i64,
}

/// Observed state of an ingestion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IngestionStatus {
    #[serde(flatten)]
    pub request: RequestStatus,
    /// Why no calibration follows this ingestion, when one does not.
    pub calibration_skipped: Option<String>,
    /// The referenced files the tracked request ingests without: they had not arrived.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_files: Vec<String>,
}

impl IngestionStatus {
    /// Whether the ingestion of `generation` is complete.
    pub fn completed(&self, generation: i64) -> bool {
        self.request.completed_generation == Some(generation)
    }
}

impl Model for Ingestion {
    const KIND: &'static str = "Ingestion";
    const LINKS: &'static [Link] = &[Link::to::<Observation>("observation", "ingestions")];
    type Status = IngestionStatus;
}

/// "This ingestion must be calibrated." Key: the ingestion's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Link to the Ingestion.
    pub ingestion: String,
    pub instrument: Instrument,
    pub name: String,
    /// The ingestion generation whose completion asked for this calibration.
    pub ingestion_generation: i64,
}

/// Observed state of a calibration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CalibrationStatus {
    #[serde(flatten)]
    pub request: RequestStatus,
    /// Why the data is now marked not calibratable, when it was marked after this
    /// calibration was asked for: the calibration is kept (its products exist).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_calibratable: Option<String>,
}

impl Model for Calibration {
    const KIND: &'static str = "Calibration";
    const LINKS: &'static [Link] = &[Link::to::<Ingestion>("ingestion", "calibrations")];
    type Status = CalibrationStatus;
}

/// Where a Workspaces request stands, as the sync step and event steps last saw it: part of
/// the status of every kind that asks Workspaces for work.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestStatus {
    /// The Workspaces capability (or workflow) request id.
    pub request_id: Option<i64>,
    pub state: Option<RequestState>,
    /// `<kind>/<key>@<generation>`: how the request is found again after a crash.
    pub external_id: Option<String>,
    /// The generation the tracked request serves (the one in `external_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// A newer generation waiting for the tracked request to end before its own is made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_generation: Option<i64>,
    /// The tracked request thalamus asked Workspaces to cancel (`on_new_generation: cancel`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_requested: Option<i64>,
    /// The service's message, if any.
    pub message: Option<String>,
    /// The source timestamp of the last status applied, so stale messages are ignored.
    pub updated_at: Option<String>,
    /// The generation whose request completed.
    pub completed_generation: Option<i64>,
    /// The Failed or Cancelled request already reported as this object's error: the next
    /// attempt (after the backoff, or an operator's retry) makes a new request instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reported: Option<i64>,
}

impl RequestStatus {
    /// The generation the tracked request serves: `generation`, or for a status written
    /// before that field existed, the `@<generation>` its external id ends with.
    pub fn served_generation(&self) -> Option<i64> {
        self.generation.or_else(|| {
            let (_, generation) = self.external_id.as_deref()?.rsplit_once('@')?;
            generation.parse().ok()
        })
    }
}

/// Records an observation: there is nothing to enact for a dataset that exists; syncing it
/// lets its ingestion proceed in dependency order.
pub struct RecordObservation;

#[async_trait]
impl SyncStep for RecordObservation {
    type Model = Observation;

    async fn sync(&self, _obj: &mut Obj<Observation>, _ctx: &StepContext) -> StepResult {
        Ok(Progress::Done)
    }
}

/// Registers the Observation sync step.
pub fn register(registry: &mut Registry, _settings: &Settings) -> anyhow::Result<()> {
    registry.sync(RecordObservation)?;
    Ok(())
}
