"""taxi_tornado: a real-time dispatch hub for taxi and ride-hailing apps."""

__version__ = "0.1.0"
