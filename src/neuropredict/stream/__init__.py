"""The serving layer: a Kafka consumer-group worker that scores ticks with the production model."""
