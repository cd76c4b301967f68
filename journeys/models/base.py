from django.db import models


class Timestamped(models.Model):
    """Created/updated stamps shared by configuration and runtime models."""

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True
