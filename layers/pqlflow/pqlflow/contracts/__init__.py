"""The contracts: usage events in (the Segment Spec), the events pqlflow emits, the bus, their JSON Schemas."""
