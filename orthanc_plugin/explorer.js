// BraNet-PACS panel for Orthanc Explorer (research use only): the BraNet result on the study page.
// Data comes from GET /branet/studies/{id}; every value is inserted as text (never as HTML).

function BraNetPercent(p) {
  return (p === null || p === undefined) ? '' : (100 * p).toFixed(1) + ' %';
}

// A call within this distance of the decision threshold is marked: the model is close to undecided there.
var BRANET_NEAR_THRESHOLD = 0.05;

function BraNetInstanceLinks(instanceId, label) {
  var cell = $('<span>');
  if (instanceId) {
    cell.append($('<a>').attr('href', '#instance?uuid=' + instanceId).addClass('branet-' + label.toLowerCase())
                        .text(label));
    cell.append(' ');
    cell.append($('<a>').attr('href', '../instances/' + instanceId + '/file').attr('target', '_blank')
                        .text('(download)'));
  } else {
    cell.text(label + ': none');
  }
  return cell;
}

function BraNetRender(panel, data) {
  var study = data.study || {};
  var state = study.state || 'not analysed';
  panel.empty();
  panel.append($('<h3>').css('margin', '0 0 6px 0').text('BraNet result (research use only)'));
  var summary = $('<p>').css('margin', '4px 0');
  summary.append($('<b>').text('Status: ')).append($('<span>').addClass('branet-state').text(state));
  if (study.model_version) {
    summary.append(' \u2014 ').append($('<b>').text('model: ')).append($('<span>').text(study.model_version));
  }
  if (data.viewer_url) {
    summary.append(' \u2014 ').append($('<a>').addClass('branet-viewer').attr('href', '..' + data.viewer_url)
                                              .attr('target', '_blank').text('open in OHIF viewer'));
  }
  panel.append(summary);
  if (study.reason) {
    panel.append($('<p>').addClass('branet-reason').css({'margin': '4px 0', 'font-size': 'smaller'})
                         .text(study.reason));
  }

  var breasts = $('<p>').addClass('branet-breasts').css('margin', '4px 0');
  $.each(data.breasts || [], function(i, breast) {
    var side = breast.laterality ? breast.laterality : 'side unknown';
    var call = breast.p_malignant === null ? 'no finding'
                                           : breast.label + ' ' + BraNetPercent(breast.p_malignant);
    breasts.append($('<span>').addClass('branet-breast').css('margin-right', '16px')
                              .append($('<b>').text(breast.modality + ' ' + side + ': '))
                              .append(document.createTextNode(call + ' (highest of ' + breast.images + ' view' +
                                                              (breast.images === 1 ? '' : 's') + ')')));
  });
  if ((data.breasts || []).length > 0) {
    panel.append(breasts);
  }

  var table = $('<table>').addClass('branet-findings').css({'border-collapse': 'collapse', 'width': '100%'});
  var head = $('<tr>');
  $.each(['ROI', 'Image', 'Finding', 'Label', 'p(malignant) / threshold', 'Certainty', 'Outputs'], function(i, title) {
    head.append($('<th>').css({'text-align': 'left', 'padding': '2px 6px'}).text(title));
  });
  table.append(head);
  var rows = 0;
  $.each(data.instances || [], function(i, instance) {
    $.each(instance.images || [], function(j, image) {
      var what = (image.modality || instance.modality || '') + (image.laterality ? ' ' + image.laterality : '') +
                 (image.instance_number !== null && image.instance_number !== undefined ?
                  ' image ' + image.instance_number : '') + (image.frame ? ' frame ' + image.frame : '');
      var threshold = image.model ? image.model.threshold : null;
      var outputs = $('<span>').append(BraNetInstanceLinks(image.sr_instance, 'SR')).append(' \u00b7 ')
                               .append(BraNetInstanceLinks(image.seg_instance, 'SEG'));
      var findings = image.findings || [];
      if (image.error) {
        table.append($('<tr>').append($('<td>')).append($('<td>').text(what))
                              .append($('<td>').attr('colspan', 5).text('error: ' + image.error)));
        rows++;
      } else if (findings.length === 0) {
        table.append($('<tr>').append($('<td>')).append($('<td>').text(what)).append($('<td>').text('none'))
                              .append($('<td>')).append($('<td>')).append($('<td>')).append($('<td>').append(outputs)));
        rows++;
      }
      $.each(findings, function(k, finding) {
        var thumb = $('<td>');
        if (finding.thumbnail_url) {
          thumb.append($('<img>').addClass('branet-roi').attr('src', '..' + finding.thumbnail_url)
                                 .attr('alt', 'ROI ' + finding.index).css({'width': '96px', 'height': '96px'}));
        }
        var label = $('<td>').addClass('branet-label').text(finding.label)
                             .css('color', finding.label === 'malignant' ? '#b00000' : '#006000');
        var probability = $('<td>').addClass('branet-probability').text(BraNetPercent(finding.p_malignant));
        if (threshold !== null && threshold !== undefined) {
          probability.append($('<span>').addClass('branet-threshold').text(' / ' + BraNetPercent(threshold)));
          if (Math.abs(finding.p_malignant - threshold) < BRANET_NEAR_THRESHOLD) {
            probability.append($('<br>')).append($('<span>').addClass('branet-near-threshold')
                                                    .css({'color': '#a06000', 'font-size': 'smaller'})
                                                    .text('near threshold'));
          }
        }
        var certainty = $('<td>').addClass('branet-certainty')
                                 .text(finding.prompt === 'auto' ? BraNetPercent(finding.proposal_score) : 'given box');
        table.append($('<tr>').append(thumb).append($('<td>').text(what)).append($('<td>').text(finding.index))
                              .append(label).append(probability).append(certainty)
                              .append($('<td>').append(outputs.clone())));
        rows++;
      });
    });
  });
  if (rows > 0) {
    table.find('td').css({'padding': '2px 6px', 'border-top': '1px solid #ccc', 'vertical-align': 'middle'});
    panel.append(table);
  }
}

function BraNetRefresh() {
  $('#branet-panel').remove();
  if (!$.mobile.pageData || !$.mobile.pageData.uuid) {
    return;
  }
  var uuid = $.mobile.pageData.uuid;
  var panel = $('<div>').attr('id', 'branet-panel').attr('data-study', uuid)
                        .css({'border': '1px solid #888', 'border-radius': '6px', 'padding': '8px',
                              'margin-bottom': '10px', 'background': '#f6f6f6'})
                        .text('BraNet: loading\u2026');
  $('#list-series').parent().prepend(panel);
  $.ajax({
    url: '../branet/studies/' + uuid,
    dataType: 'json',
    cache: false,
    success: function(data) { BraNetRender(panel, data); },
    error: function(xhr) { panel.text('BraNet: no result (' + xhr.status + ')'); }
  });
}

$('#study').live('pagebeforeshow', BraNetRefresh);
