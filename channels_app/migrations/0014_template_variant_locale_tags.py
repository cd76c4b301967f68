"""Template variants' locales become canonical language tags, one per tag whatever its case.

Until now a variant's locale was saved as typed (`pt_BR`, `FR`, `fr-ca`) and unique only in its
exact spelling, while customers' locales were matched ignoring case: `fr-CA` and `fr-ca` could
both exist and one silently won. This migration:

- writes each variant's tag in its canonical form (`pt_BR` -> `pt-BR`, `FR` -> `fr`,
  `zh-hant-tw` -> `zh-Hant-TW`); a locale that is no language tag (`zz zz!!`) is left as it is
  (it matches no customer; the admin asks for a tag the next time the template is saved);
- for two or more variants of one template with the same tag once case is ignored, keeps the
  most recently created one under the tag (the one the old lookup picked on SQLite, and on
  PostgreSQL unless another was edited since) and, for each other: deletes it when its subject
  and bodies are the same as the kept one's (nothing is lost), else renames its locale to the
  private-use tag `x-dup-<id>`, which no customer's locale matches, so that its text is still
  there to merge by hand. Each change is printed;
- replaces the exact-spelling unique constraint with one on (template, lower(locale)).
"""

from django.db import migrations, models
from django.db.models.functions import Lower


def forwards(apps, schema_editor):
    from channels_app.services.locales import locale_canonical, locale_key

    Variant = apps.get_model("channels_app", "TemplateVariant")
    groups: dict[tuple[int, str], list] = {}
    for variant in Variant.objects.order_by("template_id", "-pk"):
        groups.setdefault((variant.template_id, locale_key(variant.locale)), []).append(variant)
    renames = []
    for (template_id, _), (kept, *others) in groups.items():
        for other in others:
            if (other.subject, other.body, other.html_body) == (kept.subject, kept.body, kept.html_body):
                print(f"\n  template #{template_id}: variant #{other.pk} ({other.locale!r}) deleted: the same text as "
                      f"variant #{kept.pk} ({kept.locale!r})")
                other.delete()
            else:
                renames.append((other, f"x-dup-{other.pk}"))
                print(f"\n  template #{template_id}: variant #{other.pk} ({other.locale!r}) renamed x-dup-{other.pk}: "
                      f"variant #{kept.pk} ({kept.locale!r}) has the same language tag; merge its text and delete it")
        canonical = locale_canonical(kept.locale)
        if canonical and canonical != kept.locale:
            renames.append((kept, canonical))
        elif not canonical:
            print(f"\n  template #{template_id}: variant #{kept.pk} has the locale {kept.locale!r}, which is no language "
                  "tag; it matches no customer: give it a tag such as fr or pt-BR")
    for variant, locale in sorted(renames, key=lambda r: not r[1].startswith("x-dup-")):  # make room first
        Variant.objects.filter(pk=variant.pk).update(locale=locale)


class Migration(migrations.Migration):

    dependencies = [
        ("channels_app", "0013_suppression_after_erasure"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="templatevariant", name="template_variant_locale_unique"),
        migrations.RunPython(forwards, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="templatevariant",
            constraint=models.UniqueConstraint(
                models.F("template"), Lower("locale"), name="template_variant_locale_ci_unique",
                violation_error_message="there is a variant for this language tag already (whatever its case)"),
        ),
        migrations.AlterField(
            model_name="historicaltemplatevariant", name="locale",
            field=models.CharField(help_text="language tag, e.g. fr, pt-BR, zh-Hant-TW", max_length=16),
        ),
        migrations.AlterField(
            model_name="templatevariant", name="locale",
            field=models.CharField(help_text="language tag, e.g. fr, pt-BR, zh-Hant-TW", max_length=16),
        ),
    ]
