"""KafkaNeuroPredict: train deep time-series models on stock prices, serve them on a Kafka stream."""

__version__ = "0.1.0"
