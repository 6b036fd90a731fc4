"""labelwheel as the model behind a Label Studio project: its ML-backend protocol, images fetched from the
configured Label Studio host only, annotations received through webhooks, and predictions pushed back."""
