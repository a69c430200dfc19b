-- distinct_records: how many distinct record ids one source holds (the teacher sample's size depends on it)
SELECT count(DISTINCT record_id) AS n FROM raw_records WHERE source = $source
