import com.fasterxml.jackson.core.JsonEncoding;
import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.math.BigDecimal;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.Collection;
import java.util.HexFormat;
import java.util.Map;
import java.util.UUID;
import org.apache.avro.Conversions;
import org.apache.avro.Schema;
import org.apache.avro.SchemaCompatibility;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.data.TimeConversions;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericEnumSymbol;
import org.apache.avro.generic.GenericFixed;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;

/**
 * K2's schemas and messages as Apache Avro for Java sees them: the reference implementation of Avro's schema
 * resolution and compatibility rules, for tests that check K2 against an Avro other than the services' own.
 *
 * <pre>
 * fingerprint SCHEMA...            the single-object header fingerprint of each schema file, hex, one a line
 * compatibility READER WRITER      SchemaCompatibility's verdict on READER reading WRITER's data, as JSON
 * decode READER SCHEMA...          each stdin line (a hex single-object message) decoded by BinaryMessageDecoder
 *                                  with READER and the SCHEMAs in its store, as one JSON line: {"record": ...}
 *                                  (decimals as exact numbers, timestamps as epoch microseconds) or {"error": ...}
 * </pre>
 */
public final class AvroCheck {
  private static final JsonFactory JSON = new JsonFactory();

  public static void main(String[] args) throws IOException, java.security.NoSuchAlgorithmException {
    if (args.length == 0) {
      throw new IllegalArgumentException("usage: fingerprint|compatibility|decode ...");
    }
    try (JsonGenerator out = JSON.createGenerator(System.out, JsonEncoding.UTF8)) {
      out.enable(JsonGenerator.Feature.WRITE_BIGDECIMAL_AS_PLAIN);
      out.setRootValueSeparator(null);
      switch (args[0]) {
        case "fingerprint" -> {
          for (int i = 1; i < args.length; i++) {
            byte[] fingerprint = SchemaNormalization.parsingFingerprint("CRC-64-AVRO", parse(args[i]));
            out.writeRaw(HexFormat.of().formatHex(fingerprint) + "\n");
          }
        }
        case "compatibility" -> compatibility(out, parse(args[1]), parse(args[2]));
        case "decode" -> decode(out, args);
        default -> throw new IllegalArgumentException("unknown command " + args[0]);
      }
    }
  }

  private static Schema parse(String path) throws IOException {
    return new Schema.Parser().parse(new File(path));
  }

  private static void compatibility(JsonGenerator out, Schema reader, Schema writer) throws IOException {
    SchemaCompatibility.SchemaCompatibilityResult result =
        SchemaCompatibility.checkReaderWriterCompatibility(reader, writer).getResult();
    out.writeStartObject();
    out.writeStringField("compatibility", result.getCompatibility().name());
    out.writeArrayFieldStart("incompatibilities");
    for (SchemaCompatibility.Incompatibility incompatibility : result.getIncompatibilities()) {
      out.writeStartObject();
      out.writeStringField("type", incompatibility.getType().name());
      out.writeStringField("location", incompatibility.getLocation());
      out.writeStringField("message", incompatibility.getMessage());
      out.writeEndObject();
    }
    out.writeEndArray();
    out.writeEndObject();
    out.writeRaw("\n");
  }

  private static void decode(JsonGenerator out, String[] args) throws IOException {
    GenericData model = new GenericData();
    model.addLogicalTypeConversion(new Conversions.DecimalConversion());
    model.addLogicalTypeConversion(new Conversions.UUIDConversion());
    model.addLogicalTypeConversion(new TimeConversions.TimestampMillisConversion());
    model.addLogicalTypeConversion(new TimeConversions.TimestampMicrosConversion());
    BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(model, parse(args[1]));
    for (int i = 2; i < args.length; i++) {
      decoder.addSchema(parse(args[i]));
    }
    BufferedReader lines = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    for (String line = lines.readLine(); line != null; line = lines.readLine()) {
      out.writeStartObject();
      try {
        GenericRecord record = decoder.decode(HexFormat.of().parseHex(line.strip()));
        out.writeFieldName("record");
        write(out, record);
      } catch (RuntimeException | IOException error) {
        out.writeStringField("error", error.getClass().getName() + ": " + error.getMessage());
      }
      out.writeEndObject();
      out.writeRaw("\n");
      out.flush();
    }
  }

  private static void write(JsonGenerator out, Object value) throws IOException {
    if (value == null) {
      out.writeNull();
    } else if (value instanceof GenericRecord record) {
      out.writeStartObject();
      for (Schema.Field field : record.getSchema().getFields()) {
        out.writeFieldName(field.name());
        write(out, record.get(field.pos()));
      }
      out.writeEndObject();
    } else if (value instanceof Map<?, ?> map) {
      out.writeStartObject();
      for (Map.Entry<?, ?> entry : map.entrySet()) {
        out.writeFieldName(entry.getKey().toString());
        write(out, entry.getValue());
      }
      out.writeEndObject();
    } else if (value instanceof Collection<?> items) {
      out.writeStartArray();
      for (Object item : items) {
        write(out, item);
      }
      out.writeEndArray();
    } else if (value instanceof BigDecimal decimal) {
      out.writeNumber(decimal);
    } else if (value instanceof Instant instant) {
      out.writeNumber(Math.addExact(Math.multiplyExact(instant.getEpochSecond(), 1_000_000L),
          instant.getNano() / 1_000));
    } else if (value instanceof Integer || value instanceof Long || value instanceof Boolean) {
      out.writeObject(value);
    } else if (value instanceof ByteBuffer bytes) {
      byte[] copy = new byte[bytes.remaining()];
      bytes.duplicate().get(copy);
      out.writeString(HexFormat.of().formatHex(copy));
    } else if (value instanceof GenericFixed fixed) {
      out.writeString(HexFormat.of().formatHex(fixed.bytes()));
    } else if (value instanceof CharSequence || value instanceof GenericEnumSymbol<?>
        || value instanceof UUID) {
      out.writeString(value.toString());
    } else {
      throw new IllegalStateException("no JSON form for " + value.getClass().getName());
    }
  }
}
