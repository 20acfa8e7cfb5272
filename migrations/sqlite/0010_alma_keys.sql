-- One key scheme for every ALMA kind: CalibrationMarks were keyed by the bare uid
-- (`uid://…`); they take their ASDM's key, `ALMA/uid://…`, as its Observation, Ingestion and
-- Calibration have (their audit trail too).
UPDATE objects SET key = 'ALMA/' || key
 WHERE kind = 'CalibrationMark' AND key NOT LIKE 'ALMA/%'
   AND NOT EXISTS (SELECT 1 FROM objects o WHERE o.kind = 'CalibrationMark' AND o.key = 'ALMA/' || objects.key);
UPDATE executions SET key = 'ALMA/' || key
 WHERE kind = 'CalibrationMark' AND key NOT LIKE 'ALMA/%';
-- Calibratability is no longer part of an Observation's spec (it is the CalibrationMark's):
-- the field leaves the stored specs without moving their generation, so the source's next
-- poll, which no longer writes it, finds them unchanged and no ASDM is ingested again.
UPDATE objects SET spec = json_remove(spec, '$.not_calibratable')
 WHERE kind = 'Observation' AND json_extract(spec, '$.not_calibratable') IS NOT NULL;
