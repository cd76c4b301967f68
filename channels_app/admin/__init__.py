"""Admin: channels with health, templates with preview, the deliveries log, consent and
data-subject requests. Thin: forms validate, actions call services."""

from channels_app.admin import channels, deliveries, privacy, templates  # noqa: F401  (register)
