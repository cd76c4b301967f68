"""Forms of the journeys console: the step forms (each kind owns its own) and the fields they share."""
